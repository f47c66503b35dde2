"""Helpers for tests that run a private stack: a temporary state folder on free ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path

# Every port setting of a stack; each test stack gets its own free port for each.
PORT_SETTINGS: tuple[str, ...] = (
    "KAFKA_PORT",
    "KAFKA_CONTROLLER_PORT",
    "REDIS_PORT",
    "TRITON_HTTP_PORT",
    "TRITON_GRPC_PORT",
    "TRITON_METRICS_PORT",
    "API_PORT",
    "WORKER_METRICS_PORT",
    "MLFLOW_PORT",
)


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that were free on 127.0.0.1 a moment ago (held open together, then freed)."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
    return ports


def stack_env(
    home: Path,
    *,
    worker_count: int = 0,
    skip_model_init: bool = True,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment for a private stack under ``home`` (all ports free, no model init by default)."""
    # A developer's own CXR_* settings (ports, partitions, components) must not leak into a test stack.
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("CXR_")}
    env["CXR_HOME"] = str(home.resolve())
    env["CXR_WORKER_COUNT"] = str(worker_count)
    for name, port in zip(PORT_SETTINGS, free_ports(len(PORT_SETTINGS)), strict=True):
        env[f"CXR_{name}"] = str(port)
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
