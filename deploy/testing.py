"""Helpers for tests that run a private stack: a temporary state folder on free ports."""

from __future__ import annotations

import hashlib
import os
import random
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path

# Every address of a stack, as a template of its one free port; each test stack gets its own ports.
ADDRESS_SETTINGS: dict[str, str] = {
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:{}",
    "KAFKA_CONTROLLER_PORT": "{}",
    "REDIS_URL": "redis://127.0.0.1:{}/0",
    "TRITON_HTTP_URL": "http://127.0.0.1:{}",
    "TRITON_GRPC_URL": "127.0.0.1:{}",
    "TRITON_METRICS_PORT": "{}",
    "MLFLOW_TRACKING_URI": "http://127.0.0.1:{}",
    "PROMETHEUS_URL": "http://127.0.0.1:{}",
    "API_PORT": "{}",
    "WORKER_METRICS_PORT": "{}",
    "PROCESSORS_PORT": "{}",
    "RETRAIN_METRICS_PORT": "{}",
    "ROLLOUT_METRICS_PORT": "{}",
    "DICOM_PORT": "{}",
    "GATEWAY_METRICS_PORT": "{}",
}


# Ports a test hands to a server come from below the kernel's ephemeral range: a port taken by bind-to-0 is
# free only until some client's outgoing connection is given it as its local port, and a suite that runs
# Kafka, Ray and many clients at once makes thousands of those (CI once lost Triton's start to one). Ray's
# worker ports sit below 20000, so the range starts above them.
_PORT_FLOOR = 20000
_FALLBACK_EPHEMERAL_LOW = 32768


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _FALLBACK_EPHEMERAL_LOW


def _worker_block() -> range:
    """This process's share of the test port range: one block per pytest-xdist worker, so they never race."""
    low, high = _PORT_FLOOR, _ephemeral_low()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker) if worker.isdigit() else 0
    size = (high - low) // max(count, 1)
    return range(low + index * size, low + (index + 1) * size)


class _PortCursor:
    """Walks this process's block from a random start, so back-to-back stacks never reuse a port at once."""

    def __init__(self) -> None:
        self._block: range | None = None
        self._next = 0

    def candidates(self) -> Iterator[int]:
        if self._block is None:
            self._block = _worker_block()
            self._next = random.randrange(len(self._block)) if len(self._block) else 0
        for _ in range(len(self._block)):
            port = self._block[self._next]
            self._next = (self._next + 1) % len(self._block)
            yield port


_cursor = _PortCursor()


def _bound(stack: ExitStack, port: int) -> bool:
    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 a moment ago and outside the ephemeral range."""
    with ExitStack() as stack:
        ports: list[int] = []
        if _ephemeral_low() - _PORT_FLOOR >= 1000:
            for port in _cursor.candidates():
                if len(ports) == count:
                    break
                if _bound(stack, port):  # held open together so one call never returns a port twice
                    ports.append(port)
        while len(ports) < count:  # an unusual kernel range: the kernel's own choice, as before
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
    return ports


def stack_env(
    home: Path,
    *,
    worker_count: int = 0,
    skip_model_init: bool = True,
    feedback_loop: bool = False,
    gateway: bool = False,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment for a private stack under ``home`` (all ports free, no model init by default)."""
    # A developer's own CXR_* settings (addresses, password, partitions, components) must not leak into a
    # test stack.
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("CXR_")}
    env["CXR_HOME"] = str(home.resolve())
    env["CXR_WORKER_COUNT"] = str(worker_count)
    # The stream processors and the retrain worker only where a test is about the feedback loop.
    env["CXR_PROCESSORS_ENABLED"] = str(feedback_loop).lower()
    env["CXR_RETRAIN_WORKER_ENABLED"] = str(feedback_loop).lower()
    env["CXR_ROLLOUT_WORKER_ENABLED"] = str(feedback_loop).lower()
    # The DICOM gateway only where a test sends DICOM over the network.
    env["CXR_GATEWAY_ENABLED"] = str(gateway).lower()
    # Ray's socket paths must stay under 108 bytes; a test's state folder (pytest-of-root/pytest-N/popen-gw1/...)
    # may be too deep for them, so Ray gets a short folder of its own, named after the state folder.
    env["CXR_RAY_TMPDIR"] = f"/tmp/cxr-ray-{hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:12]}"
    ports = free_ports(len(ADDRESS_SETTINGS))
    for (name, template), port in zip(ADDRESS_SETTINGS.items(), ports, strict=True):
        env[f"CXR_{name}"] = template.format(port)
    if skip_model_init:
        env["CXR_SKIP_MODEL_INIT"] = "1"
    return env


def cxr(
    args: Sequence[str], env: Mapping[str, str], *, timeout_s: float = 300.0
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m cxr_triage ARGS`` the way a user would; output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "cxr_triage", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
