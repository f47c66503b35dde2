"""Child processes of the local stack: start them in their own session, record them, stop exactly them.

A pid alone is not an identity: after a crash or a reboot the number may belong to another program. A pid
file therefore records the kernel start time of the process (``/proc/<pid>/stat`` field 22) and a random
token put into the child's environment. The leader is ours only while its start time matches; other members
of its process group (Triton's Python stubs, say) are ours only if their environment carries the token.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

logger = logging.getLogger(__name__)

TOKEN_ENV = "CXR_STACK_TOKEN"
_PROC = Path("/proc")


@dataclass(frozen=True)
class ProcStat:
    state: str
    pgrp: int
    start_ticks: int


@dataclass(frozen=True)
class PidRecord:
    """What ``up`` wrote about a process it started."""

    name: str
    pid: int
    start_ticks: int
    token: str
    argv: tuple[str, ...]
    started_at: str

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PidRecord:
        raw = json.loads(text)
        return cls(
            name=str(raw["name"]),
            pid=int(raw["pid"]),
            start_ticks=int(raw["start_ticks"]),
            token=str(raw["token"]),
            argv=tuple(str(a) for a in raw["argv"]),
            started_at=str(raw["started_at"]),
        )


def proc_stat(pid: int) -> ProcStat | None:
    """State, process group and start time of ``pid``, or None if there is no such process."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return ProcStat(state=fields[0], pgrp=int(fields[2]), start_ticks=int(fields[19]))


def is_alive(record: PidRecord) -> bool:
    """True while the process the record names still runs (a zombie or a reused pid does not count)."""
    stat = proc_stat(record.pid)
    return stat is not None and stat.state not in ("Z", "X") and stat.start_ticks == record.start_ticks


def _has_token(pid: int, token: str) -> bool:
    try:
        environ = (_PROC / str(pid) / "environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return f"{TOKEN_ENV}={token}".encode() in environ.split(b"\0")


def group_members(record: PidRecord) -> list[int]:
    """Live processes of the record's group that are ours: the verified leader and token-bearing others."""
    members: list[int] = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        stat = proc_stat(pid)
        if stat is None or stat.pgrp != record.pid or stat.state in ("Z", "X"):
            continue
        # Some servers (redis) overwrite their environment block with a process title: the leader is
        # identified by its start time instead.
        if (pid == record.pid and stat.start_ticks == record.start_ticks) or _has_token(pid, record.token):
            members.append(pid)
    return members


class PidFile:
    """``<run_dir>/<name>.pid``: one JSON record, written atomically."""

    def __init__(self, run_dir: Path, name: str) -> None:
        self.path = run_dir / f"{name}.pid"
        self.name = name

    def read(self) -> PidRecord | None:
        try:
            return PidRecord.from_json(self.path.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring unreadable pid file", extra={"path": str(self.path)})
            return None

    def write(self, record: PidRecord) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".pid.tmp")
        tmp.write_text(record.to_json())
        tmp.replace(self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def spawn(
    *,
    name: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    log_path: Path,
    cwd: Path,
) -> tuple[subprocess.Popen[bytes], PidRecord]:
    """Start ``argv`` as the leader of a new session, stdout and stderr appended to ``log_path``."""
    token = secrets.token_hex(8)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    with log_path.open("ab") as log:
        log.write(f"\n=== {name} starting at {started_at}: {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**env, TOKEN_ENV: token},
            cwd=cwd,
            start_new_session=True,
        )
    stat = proc_stat(proc.pid)
    if stat is None:  # exited before we could look: still return a record that is_alive() rejects
        stat = ProcStat(state="X", pgrp=proc.pid, start_ticks=-1)
    record = PidRecord(
        name=name,
        pid=proc.pid,
        start_ticks=stat.start_ticks,
        token=token,
        argv=tuple(argv),
        started_at=started_at,
    )
    logger.info("started", extra={"component": name, "pid": proc.pid, "log": str(log_path)})
    return proc, record


def reap(pids: Iterable[int]) -> None:
    """Collect the exit status of those ``pids`` that are our exited children, so no zombie lingers."""
    for pid in pids:
        # ChildProcessError: not our child (started by an earlier `up`); its parent, init, reaps it.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def _signal(record: PidRecord, members: list[int], sig: signal.Signals) -> None:
    try:
        if record.pid in members:
            # The leader is alive, so its group id cannot have been reused: signal the whole group at once.
            os.killpg(record.pid, sig)
        else:
            for pid in members:
                os.kill(pid, sig)
    except ProcessLookupError:
        pass


def terminate(records: Sequence[PidRecord], *, timeout_s: float = 20.0, poll_s: float = 0.1) -> list[str]:
    """SIGTERM the groups of ``records``, SIGKILL what remains after ``timeout_s``; return names killed hard."""
    pending = {r.name: r for r in records if group_members(r)}
    for record in pending.values():
        logger.info("stopping", extra={"component": record.name, "pid": record.pid})
        _signal(record, group_members(record), signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        reap(r.pid for r in pending.values())
        pending = {name: r for name, r in pending.items() if group_members(r)}
        if pending:
            time.sleep(poll_s)
    killed = sorted(pending)
    for record in pending.values():
        logger.warning("did not stop in time, killing", extra={"component": record.name, "pid": record.pid})
        _signal(record, group_members(record), signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while pending and time.monotonic() < deadline:
        reap(r.pid for r in pending.values())
        pending = {name: r for name, r in pending.items() if group_members(r)}
        if pending:
            time.sleep(poll_s)
    return killed
