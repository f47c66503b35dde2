"""Helpers for tests that run a private stack: a temporary state folder on free ports."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
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
