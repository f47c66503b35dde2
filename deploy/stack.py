"""Start, stop and report the local stack; the CLI and the foreground supervisor both call these."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cxr_triage.settings import Settings
from deploy.components import build_components, ports_in_use, settings_env
from deploy.procs import PidFile, PidRecord, group_members, is_alive, proc_stat, reap, spawn, terminate
from deploy.spec import Component, SetupError

logger = logging.getLogger(__name__)

State = Literal["running", "unhealthy", "stopped", "dead"]
SUPERVISOR = "supervisor"
POLL_S = 0.2
LOG_TAIL_LINES = 25
# Stop order by kind: clients of the services first, the broker last (it needs a few seconds to close).
_STOP_PHASES: tuple[tuple[str, ...], ...] = (
    ("api", "prometheus"),
    ("worker",),
    ("triton",),
    ("redis",),
    ("kafka",),
)


class StackError(RuntimeError):
    """A component failed to start; the message names it, its log file and the log's last lines."""


class Cancelled(StackError):
    """A start was abandoned because the supervisor was asked to stop."""


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    state: State
    pid: int | None
    port: int | None
    log: Path
    details: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {"state": self.state, "pid": self.pid, "port": self.port, "log": str(self.log), **self.details}


@dataclass(frozen=True)
class StartResult:
    name: str
    action: Literal["started", "already running"]
    pid: int
    port: int
    seconds: float
    host: str = "127.0.0.1"


@dataclass
class Stack:
    """The settings, the environment every child gets, and the components they define."""

    settings: Settings
    env: dict[str, str] = field(default_factory=dict)
    components: list[Component] = field(default_factory=list)

    @classmethod
    def from_settings(cls, settings: Settings, base_env: Mapping[str, str] | None = None) -> Stack:
        env = settings_env(settings, base_env)
        return cls(settings=settings, env=env, components=build_components(settings, env))

    def pid_file(self, name: str) -> PidFile:
        return PidFile(self.settings.run_dir, name)

    def log_path(self, name: str) -> Path:
        return self.settings.logs_dir / f"{name}.log"

    def recorded_names(self) -> list[str]:
        """Names of every component with a pid file (workers of an earlier, larger worker_count too)."""
        names = [c.name for c in self.components]
        if self.settings.run_dir.is_dir():
            extra = sorted(p.stem for p in self.settings.run_dir.glob("*.pid") if p.stem != SUPERVISOR)
            names += [n for n in extra if n not in names]
        return names


@contextmanager
def stack_lock(settings: Settings) -> Iterator[None]:
    """One `up` or `down` at a time per state folder."""
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    with (settings.run_dir / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - 16_384))
            text = handle.read().decode(errors="replace")
    except FileNotFoundError:
        return "(no log yet)"
    return "\n".join(text.splitlines()[-lines:])


def _failure(stack: Stack, component: Component, what: str) -> StackError:
    log = stack.log_path(component.name)
    return StackError(f"{component.name} {what}; see {log}\n--- last lines of {log} ---\n{log_tail(log)}")


def _wait_healthy(
    stack: Stack, component: Component, record: PidRecord, cancel: Callable[[], bool], since: float
) -> None:
    deadline = since + component.start_timeout_s
    while not component.probe():
        if not is_alive(record):
            reap([record.pid])
            raise _failure(stack, component, f"exited while starting (pid {record.pid})")
        if cancel():
            raise Cancelled(f"start of {component.name} cancelled")
        if time.monotonic() > deadline:
            raise _failure(
                stack, component, f"did not become healthy within {component.start_timeout_s:.0f} s"
            )
        time.sleep(POLL_S)


def _after_healthy(component: Component) -> None:
    if component.after_healthy is None:
        return
    try:
        component.after_healthy()
    except SetupError as exc:
        raise StackError(f"{component.name} is up but its setup failed: {exc}") from exc


def _never() -> bool:
    return False


def start_component(stack: Stack, component: Component, cancel: Callable[[], bool] = _never) -> StartResult:
    """Make ``component`` run and answer its health probe, starting it only if it is not running."""
    started = time.monotonic()
    pid_file = stack.pid_file(component.name)
    record = pid_file.read()
    if record is not None and is_alive(record):
        _wait_healthy(stack, component, record, cancel, started)
        _after_healthy(component)
        return StartResult(component.name, "already running", record.pid, component.port, 0.0, component.host)
    if record is not None:  # it died: clear what is left of its process group, then start afresh
        logger.warning("found dead, restarting", extra={"component": component.name, "pid": record.pid})
        reap([record.pid])
        terminate([record], timeout_s=5.0)
        pid_file.remove()
    busy = ports_in_use(component)
    if busy:
        ports = ", ".join(str(p) for p in busy)
        raise StackError(
            f"{component.name} cannot start: port(s) {ports} on {component.host} are in use by a process "
            "this stack did not start (another stack or service?); stop it or choose other CXR_* addresses"
        )
    try:
        launch = component.prepare()
    except SetupError as exc:
        raise StackError(f"{component.name} cannot be prepared: {exc}") from exc
    _, record = spawn(
        name=component.name,
        argv=launch.argv,
        env={**stack.env, **launch.env},
        log_path=stack.log_path(component.name),
        cwd=launch.cwd or stack.settings.home,
    )
    pid_file.write(record)
    try:
        # The timeout counts from the launch: preparing (Maven, a model export) may take long the first time.
        _wait_healthy(stack, component, record, cancel, time.monotonic())
    except StackError:
        terminate([record], timeout_s=10.0)
        pid_file.remove()
        raise
    _after_healthy(component)
    seconds = time.monotonic() - started
    logger.info(
        "healthy", extra={"component": component.name, "pid": record.pid, "seconds": round(seconds, 2)}
    )
    return StartResult(component.name, "started", record.pid, component.port, seconds, component.host)


def _start_stage(stack: Stack, stage: list[Component], cancel: Callable[[], bool]) -> dict[str, StartResult]:
    """Start one stage's components side by side; once all have settled, raise the first failure."""
    # The peers are independent processes that mostly wait (a JVM, a model export, a database migration):
    # starting them together roughly halves `up` on two cores.
    with ThreadPoolExecutor(max_workers=len(stage), thread_name_prefix="start") as pool:
        futures = {c.name: pool.submit(start_component, stack, c, cancel) for c in stage}
        wait(futures.values())
    failures = [error for f in futures.values() if (error := f.exception()) is not None]
    cancelled = [error for error in failures if isinstance(error, Cancelled)]
    if cancelled or failures:
        raise (cancelled or failures)[0]
    return {name: future.result() for name, future in futures.items()}


def up(stack: Stack, components: list[Component], cancel: Callable[[], bool] = _never) -> list[StartResult]:
    """Start those of ``components`` that are not running, stage by stage; results in ``components``' order."""
    stack.settings.home.mkdir(parents=True, exist_ok=True)
    results: dict[str, StartResult] = {}
    with stack_lock(stack.settings):
        for stage in sorted({c.stage for c in components}):
            results |= _start_stage(stack, [c for c in components if c.stage == stage], cancel)
    return [results[c.name] for c in components]


def _stop_supervisor(stack: Stack, timeout_s: float = 90.0) -> None:
    """Ask a foreground `up` to stop (it then stops the stack itself), so it does not restart what we stop."""
    pid_file = stack.pid_file(SUPERVISOR)
    record = pid_file.read()
    if record is None or record.pid == os.getpid():
        return
    if is_alive(record):
        logger.info("stopping the foreground supervisor", extra={"pid": record.pid})
        os.kill(record.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while is_alive(record) and time.monotonic() < deadline:
            time.sleep(POLL_S)
    pid_file.remove()


def _is_running(stack: Stack, name: str) -> bool:
    record = stack.pid_file(name).read()
    return record is not None and is_alive(record)


def _phase(name: str) -> int:
    kind = name.split("-", 1)[0]
    for index, kinds in enumerate(_STOP_PHASES):
        if kind in kinds:
            return index
    return 1  # unknown names are stopped with the workers, before the services they use


def down(stack: Stack) -> list[str]:
    """Stop every process `up` started (verified by pid file), clients first; return the names stopped."""
    # A foreground `up` stops its own components when told to: count them as stopped by this call too.
    stopped = sorted((name for name in stack.recorded_names() if _is_running(stack, name)), key=_phase)
    _stop_supervisor(stack)
    with stack_lock(stack.settings):
        names = stack.recorded_names()
        for phase in range(len(_STOP_PHASES)):
            pid_files = [stack.pid_file(name) for name in names if _phase(name) == phase]
            records = [record for record in (p.read() for p in pid_files) if record is not None]
            live = [record for record in records if group_members(record)]
            killed = terminate(live)
            if killed:
                logger.warning("had to be killed", extra={"components": killed})
            stopped += [record.name for record in live if record.name not in stopped]
            for pid_file in pid_files:
                pid_file.remove()
    return stopped


def component_status(stack: Stack, name: str) -> ComponentStatus:
    component = next((c for c in stack.components if c.name == name), None)
    port = component.port if component is not None else None
    details = dict(component.details) if component is not None else {}
    record = stack.pid_file(name).read()
    log = stack.log_path(name)
    if record is None:
        return ComponentStatus(name, "stopped", None, port, log, details)
    if not is_alive(record):
        return ComponentStatus(name, "dead", record.pid, port, log, details)
    healthy = component is not None and component.probe()
    return ComponentStatus(name, "running" if healthy else "unhealthy", record.pid, port, log, details)


def status(stack: Stack) -> list[ComponentStatus]:
    return [component_status(stack, name) for name in stack.recorded_names()]


def supervisor_pid(stack: Stack) -> int | None:
    record = stack.pid_file(SUPERVISOR).read()
    return record.pid if record is not None and is_alive(record) else None


def record_self(stack: Stack) -> PidRecord:
    """Write the supervisor's own pid file (no token: it is never stopped by signalling its group)."""
    stat = proc_stat(os.getpid())
    assert stat is not None
    record = PidRecord(
        name=SUPERVISOR,
        pid=os.getpid(),
        start_ticks=stat.start_ticks,
        token="",
        argv=(),
        started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    stack.pid_file(SUPERVISOR).write(record)
    return record
