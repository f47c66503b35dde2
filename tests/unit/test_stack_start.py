"""Start/stop/status logic of the stack with stand-in components (small shell processes, no services)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cxr_triage.settings import Settings
from deploy import stack as stack_ops
from deploy.procs import PidRecord, is_alive, terminate
from deploy.spec import Component, Launch
from deploy.stack import Stack, StackError
from deploy.supervisor import BACKOFF_MAX_S, Supervisor, _Restarts
from deploy.testing import free_ports


def _component(name: str, argv: list[str], *, healthy: bool = True, timeout_s: float = 5.0) -> Component:
    port = free_ports(1)[0]
    return Component(
        name=name,
        port=port,
        ports=(port,),
        prepare=lambda: Launch(argv=argv),
        probe=lambda: healthy,
        start_timeout_s=timeout_s,
    )


@pytest.fixture()
def stack(tmp_path: Path) -> Iterator[Stack]:
    settings = Settings(home=tmp_path / "home")
    made = Stack(settings=settings, env={"PATH": "/usr/bin:/bin"}, components=[])
    yield made
    stack_ops.down(made)


def test_start_then_already_running_then_down(stack: Stack) -> None:
    stack.components = [_component("redis", ["sleep", "60"]), _component("worker-0", ["sleep", "60"])]
    first = stack_ops.up(stack, stack.components)
    assert [(r.name, r.action) for r in first] == [("redis", "started"), ("worker-0", "started")]
    again = stack_ops.up(stack, stack.components)
    assert [r.action for r in again] == ["already running", "already running"]
    assert [r.pid for r in again] == [r.pid for r in first]
    assert [s.state for s in stack_ops.status(stack)] == ["running", "running"]
    records = [stack.pid_file(c.name).read() for c in stack.components]
    stopped = stack_ops.down(stack)
    assert stopped == ["worker-0", "redis"]
    assert all(r is not None and not is_alive(r) for r in records)
    assert not list(stack.settings.run_dir.glob("*.pid"))
    assert stack_ops.down(stack) == []


def _staged(name: str, stage: int, probe: Callable[[], bool], prepared: list[str]) -> Component:
    port = free_ports(1)[0]

    def prepare() -> Launch:
        prepared.append(name)
        return Launch(argv=["sleep", "60"])

    return Component(name, port, (port,), prepare, probe, start_timeout_s=5.0, stage=stage)


def test_a_stage_starts_together_and_the_next_only_once_it_is_healthy(stack: Stack) -> None:
    prepared: list[str] = []

    def peer_healthy(other: str) -> Callable[[], bool]:
        # Each peer answers only once the other one has been launched: a one-by-one start would time out.
        return lambda: other in prepared

    kafka = _staged("kafka", 0, peer_healthy("redis"), prepared)
    redis = _staged("redis", 0, peer_healthy("kafka"), prepared)
    worker = _staged("worker-0", 1, lambda: True, prepared)
    api = _staged("api", 1, lambda: True, prepared)
    stack.components = [kafka, redis, worker, api]
    results = stack_ops.up(stack, stack.components)
    assert [(r.name, r.action) for r in results] == [(c.name, "started") for c in stack.components]
    assert set(prepared[:2]) == {"kafka", "redis"} and set(prepared[2:]) == {"worker-0", "api"}


def test_a_failed_stage_reports_its_failure_and_starts_nothing_after_it(stack: Stack) -> None:
    prepared: list[str] = []
    broken = _component("triton", ["sh", "-c", "echo 'no model'; exit 3"], healthy=False)
    stack.components = [
        _staged("kafka", 0, lambda: True, prepared),
        broken,
        _staged("api", 1, lambda: True, prepared),
    ]
    with pytest.raises(StackError, match="triton exited while starting"):
        stack_ops.up(stack, stack.components)
    assert prepared == ["kafka"]
    states = {s.name: s.state for s in stack_ops.status(stack)}
    assert states["kafka"] == "running" and states.get("api", "stopped") == "stopped"


def test_dead_component_is_reported_and_started_again(stack: Stack) -> None:
    stack.components = [_component("redis", ["sleep", "60"])]
    (first,) = stack_ops.up(stack, stack.components)
    record = stack.pid_file("redis").read()
    assert record is not None
    terminate([record], timeout_s=5)  # dies behind the stack's back; the pid file stays
    assert stack_ops.component_status(stack, "redis").state == "dead"
    (second,) = stack_ops.up(stack, stack.components)
    assert second.action == "started" and second.pid != first.pid


def test_unhealthy_state_when_alive_but_failing_its_probe(stack: Stack) -> None:
    healthy = {"now": True}
    component = _component("triton", ["sleep", "60"])
    component = Component(
        name="triton",
        port=component.port,
        ports=component.ports,
        prepare=component.prepare,
        probe=lambda: healthy["now"],
        start_timeout_s=5,
    )
    stack.components = [component]
    stack_ops.up(stack, stack.components)
    healthy["now"] = False
    assert stack_ops.component_status(stack, "triton").state == "unhealthy"


def test_a_component_that_exits_names_itself_and_shows_its_log(stack: Stack) -> None:
    stack.components = [_component("kafka", ["sh", "-c", "echo 'broker exploded'; exit 3"], healthy=False)]
    with pytest.raises(StackError) as failure:
        stack_ops.up(stack, stack.components)
    message = str(failure.value)
    assert message.startswith("kafka exited while starting")
    assert str(stack.log_path("kafka")) in message
    assert "broker exploded" in message
    assert stack.pid_file("kafka").read() is None


def test_a_component_that_never_gets_healthy_is_stopped_after_its_timeout(stack: Stack) -> None:
    stack.components = [_component("api", ["sleep", "60"], healthy=False, timeout_s=0.5)]
    with pytest.raises(StackError, match="api did not become healthy within"):
        stack_ops.up(stack, stack.components)
    assert stack.pid_file("api").read() is None
    assert not any(s.state in ("running", "unhealthy") for s in stack_ops.status(stack))


def test_a_port_taken_by_a_stranger_is_refused_before_starting(stack: Stack) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        component = Component(
            name="redis",
            port=port,
            ports=(port,),
            prepare=lambda: pytest.fail("must not prepare a component whose port is taken"),
            probe=lambda: True,
            start_timeout_s=1,
        )
        with pytest.raises(StackError, match=rf"redis cannot start: port\(s\) {port}"):
            stack_ops.start_component(stack, component)


def test_down_stops_clients_before_services(stack: Stack) -> None:
    stack.components = [
        _component("kafka", ["sleep", "60"]),
        _component("triton", ["sleep", "60"]),
        _component("worker-0", ["sleep", "60"]),
        _component("api", ["sleep", "60"]),
    ]
    stack_ops.up(stack, stack.components)
    assert stack_ops.down(stack) == ["api", "worker-0", "triton", "kafka"]


def test_down_leaves_a_reused_pid_alone(stack: Stack) -> None:
    """The pid file names a live process that `up` did not start (pid reuse): it is not killed."""
    stack.components = [_component("redis", ["sleep", "60"])]
    stack_ops.up(stack, stack.components)
    record = stack.pid_file("redis").read()
    assert record is not None
    stack.pid_file("redis").write(
        PidRecord("redis", record.pid, record.start_ticks + 1, "other", record.argv, "earlier")
    )
    assert stack_ops.down(stack) == []
    assert is_alive(record)
    terminate([record], timeout_s=5)


def test_restart_backoff_doubles_up_to_a_ceiling() -> None:
    delays = [_Restarts(failures=n).delay() for n in range(1, 10)]
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0]
    assert max(delays) == BACKOFF_MAX_S


def test_supervisor_restarts_a_component_that_died(stack: Stack) -> None:
    stack.components = [_component("redis", ["sleep", "60"])]
    stack_ops.up(stack, stack.components)
    first = stack.pid_file("redis").read()
    assert first is not None
    terminate([first], timeout_s=5)
    Supervisor(stack, stack.components).check_once()
    second = stack.pid_file("redis").read()
    assert second is not None and second.pid != first.pid and is_alive(second)


def test_supervisor_backs_off_after_a_failed_restart(stack: Stack) -> None:
    stack.components = [_component("api", ["sh", "-c", "exit 1"], healthy=False)]
    supervisor = Supervisor(stack, stack.components)
    supervisor.check_once()
    restarts = supervisor._restarts["api"]
    assert restarts.failures == 1 and restarts.next_try > 0
    supervisor.check_once()  # within the backoff: no new attempt
    assert restarts.failures == 1


def test_foreground_run_stops_the_stack_when_asked(stack: Stack) -> None:
    stack.components = [_component("redis", ["sleep", "60"]), _component("api", ["sleep", "60"])]
    supervisor = Supervisor(stack, stack.components)
    started: list[list[str]] = []
    stopper = threading.Timer(0.5, lambda: setattr(supervisor, "stopping", True))
    stopper.start()
    supervisor.run(on_started=lambda results: started.append([r.name for r in results]))
    assert started == [["redis", "api"]]
    assert [s.state for s in stack_ops.status(stack)] == ["stopped", "stopped"]
    assert stack_ops.supervisor_pid(stack) is None
