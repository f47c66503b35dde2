"""Pid files of the local stack: a recorded pid is only ours while its start time (or token) matches."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from deploy.procs import PidFile, PidRecord, group_members, is_alive, proc_stat, reap, spawn, terminate


def _spawn(tmp_path: Path, *argv: str) -> PidRecord:
    _, record = spawn(
        name="probe", argv=list(argv), env=dict(os.environ), log_path=tmp_path / "probe.log", cwd=tmp_path
    )
    return record


def _wait_gone(pid: int, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reap([pid])
        stat = proc_stat(pid)
        if stat is None or stat.state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_record_round_trips_through_the_pid_file(tmp_path: Path) -> None:
    record = PidRecord("kafka", 123, 456, "abc", ("java", "-cp", "x"), "2026-01-01T00:00:00+00:00")
    pid_file = PidFile(tmp_path / "run", "kafka")
    pid_file.write(record)
    assert pid_file.path == tmp_path / "run" / "kafka.pid"
    assert pid_file.read() == record
    pid_file.remove()
    assert pid_file.read() is None
    pid_file.remove()  # idempotent


def test_unreadable_pid_file_reads_as_absent(tmp_path: Path) -> None:
    (tmp_path / "redis.pid").write_text("not json")
    assert PidFile(tmp_path, "redis").read() is None


def test_spawned_process_leads_its_own_session_and_logs_to_its_file(tmp_path: Path) -> None:
    record = _spawn(
        tmp_path, sys.executable, "-c", "print('hello from child', flush=True); import time; time.sleep(30)"
    )
    try:
        stat = proc_stat(record.pid)
        assert stat is not None and stat.pgrp == record.pid
        assert os.getsid(record.pid) == record.pid
        assert is_alive(record)
        deadline = time.monotonic() + 5
        while (
            b"hello from child" not in (tmp_path / "probe.log").read_bytes() and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        assert b"hello from child" in (tmp_path / "probe.log").read_bytes()
    finally:
        terminate([record], timeout_s=5)
    assert not is_alive(record)


def test_reused_pid_is_neither_alive_nor_killed(tmp_path: Path) -> None:
    """A pid file whose pid now belongs to another process (other start time, no token) is left alone."""
    real = _spawn(tmp_path, "sleep", "30")
    try:
        stale = PidRecord("kafka", real.pid, real.start_ticks - 1, "other-token", ("java",), "earlier")
        assert not is_alive(stale)
        assert group_members(stale) == []
        assert terminate([stale], timeout_s=1) == []
        time.sleep(0.2)
        assert is_alive(real), "terminate() must not signal a process it did not start"
    finally:
        terminate([real], timeout_s=5)


def test_this_process_is_never_mistaken_for_a_recorded_one() -> None:
    stat = proc_stat(os.getpid())
    assert stat is not None
    stale = PidRecord("api", os.getpid(), stat.start_ticks + 10, "t", (), "earlier")
    assert not is_alive(stale)
    assert terminate([stale], timeout_s=0.5) == []


def test_zombie_counts_as_dead(tmp_path: Path) -> None:
    record = _spawn(tmp_path, "true")
    deadline = time.monotonic() + 5
    while is_alive(record) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not is_alive(record)
    reap([record.pid])


def test_terminate_stops_orphans_of_a_dead_leader_by_token(tmp_path: Path) -> None:
    """A leader that crashed may leave children in its group (Triton's stubs): they carry our token."""
    record = _spawn(tmp_path, "sh", "-c", "sleep 30 & echo $! > child.pid; wait")
    child_file = tmp_path / "child.pid"
    deadline = time.monotonic() + 5
    while not (child_file.exists() and child_file.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.02)
    child = int(child_file.read_text())
    os.kill(record.pid, signal.SIGKILL)
    assert _wait_gone(record.pid)
    assert not is_alive(record)
    assert group_members(record) == [child]
    terminate([record], timeout_s=5)
    assert _wait_gone(child)
    assert group_members(record) == []


def test_terminate_escalates_to_sigkill(tmp_path: Path) -> None:
    record = _spawn(tmp_path, "sh", "-c", "trap '' TERM; while :; do sleep 0.1; done")
    time.sleep(0.2)  # let the shell install its trap
    killed = terminate([record], timeout_s=0.5)
    assert killed == ["probe"]
    assert not is_alive(record)


@pytest.mark.parametrize("name", ["kafka", "worker-3"])
def test_pid_file_is_named_after_the_component(tmp_path: Path, name: str) -> None:
    assert PidFile(tmp_path, name).path.name == f"{name}.pid"
