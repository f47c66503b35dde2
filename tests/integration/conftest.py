"""Real services for integration tests: each test run gets its own state folder and free loopback ports."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from deploy.testing import free_ports, stack_env

if TYPE_CHECKING:
    from tests.integration.kafka_support import KafkaBroker

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
# Private test servers require a password like the stack's Redis, so clients are tested with AUTH.
REDIS_PASSWORD = "integration-test-password"


def free_port() -> int:
    return free_ports(1)[0]


def wait_for_port(port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]
    data_dir: Path

    @property
    def url(self) -> str:
        return f"redis://:{REDIS_PASSWORD}@127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)

    def start(self) -> None:
        self.process = _spawn_redis(self.port, self.data_dir)
        wait_for_port(self.port)


def _spawn_redis(port: int, data_dir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            REDIS_SERVER,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(data_dir),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--daemonize",
            "no",
            "--requirepass",
            REDIS_PASSWORD,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture()
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server (AOF on) on a free port, for one test."""
    if not Path(REDIS_SERVER).exists():
        pytest.fail(
            "redis-server is not installed: run `make setup` (integration tests need the real service)"
        )
    port = free_port()
    server = RedisServer(port=port, process=_spawn_redis(port, tmp_path), data_dir=tmp_path)
    wait_for_port(port)
    yield server
    if server.process.poll() is None:
        server.stop()


@dataclass
class Stack:
    home: Path
    env: dict[str, str]
    _token: str | None = None

    def token(self) -> str:
        """Bearer token of an engineer (read-only views), created on first use."""
        if self._token is None:
            created = self.cli("users", "add", "integration", "--role", "engineer", "--json")
            self._token = str(json.loads(created.stdout)["token"])
        return self._token

    def cli(
        self, *args: str, timeout_s: float = 300.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "cxr_triage", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"cxr-triage {' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
            )
        return result

    @contextmanager
    def running(self, *, down_timeout_s: float = 180.0) -> Iterator[Stack]:
        """``cxr-triage up --detach`` for the block, ``down`` after it whatever happened."""
        try:
            self.cli("up", "--detach", timeout_s=600)
            yield self
        finally:
            self.cli("down", check=False, timeout_s=down_timeout_s)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.env['CXR_API_PORT']}"


def e2e_env(home: Path) -> dict[str, str]:
    env = stack_env(home, worker_count=1, skip_model_init=False)
    # A small input keeps the untrained model fast on 2 CPU cores; the flow is the same at 224/320.
    env["CXR_INITIAL_MODEL_INPUT_SIZE"] = "128"
    return env


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The whole local stack (Kafka, Redis, Triton, worker, API) started by the real ``cxr-triage up``."""
    home = tmp_path_factory.mktemp("stack")
    with Stack(home=home, env=e2e_env(home)).running(down_timeout_s=120) as started:
        yield started


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A private Kafka broker (every cxr topic) shared by the session's API tests, started on first use."""
    from tests.integration.kafka_support import shared_jars, start_kafka  # the API's test helpers

    base = tmp_path_factory.getbasetemp()
    with start_kafka(tmp_path_factory.mktemp("kafka-home"), shared_jars(base)) as broker:
        yield broker
