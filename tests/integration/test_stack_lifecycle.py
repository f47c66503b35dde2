"""`cxr-triage up | status | down` on the real Kafka, Redis and Triton (one stack start for the module)."""

from __future__ import annotations

import json
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from cxr_triage import topics
from cxr_triage.redis_client import open_redis
from cxr_triage.settings import Settings
from deploy.procs import PidFile, PidRecord, group_members, is_alive
from deploy.testing import cxr, stack_env

pytestmark = pytest.mark.integration

SERVICES = "kafka,redis,triton,gateway"
PARTITIONS = 3


@dataclass
class LocalStack:
    home: Path
    env: dict[str, str]

    def run(self, *args: str) -> str:
        done = cxr(args, self.env)
        assert done.returncode == 0, f"cxr-triage {' '.join(args)} exited {done.returncode}:\n{done.stderr}"
        return done.stdout

    def status(self) -> dict[str, Any]:
        report: dict[str, Any] = json.loads(self.run("status", "--json"))
        return report

    def records(self) -> list[PidRecord]:
        files = [PidFile(self.home / "run", name) for name in SERVICES.split(",")]
        return [r for r in (f.read() for f in files) if r is not None]

    @property
    def bootstrap(self) -> str:
        return self.env["CXR_KAFKA_BOOTSTRAP_SERVERS"]

    @property
    def settings(self) -> Settings:
        return Settings(**{k[4:].lower(): v for k, v in self.env.items() if k.startswith("CXR_")})


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    home = tmp_path_factory.mktemp("stack-lifecycle")
    env = stack_env(home, worker_count=0, skip_model_init=True, gateway=True)
    env["CXR_DICOM_AE_TITLE"] = "LIFECYCLE_GW"
    env["CXR_KAFKA_PARTITIONS"] = str(PARTITIONS)
    stack = LocalStack(home=home, env=env)
    try:
        stack.run("up", "--detach", "--only", SERVICES)
        yield stack
    finally:
        cxr(["down"], env)


def test_status_reports_every_service_running(local_stack: LocalStack) -> None:
    report = local_stack.status()
    assert report["home"] == str(local_stack.home.resolve())
    settings = local_stack.settings
    main_port = {
        "kafka": settings.kafka_address.port,
        "redis": settings.redis_address.port,
        "triton": settings.triton_http_address.port,
        "gateway": settings.dicom_port,
    }
    for name, port in main_port.items():
        entry = report["components"][name]
        assert entry["state"] == "running", (name, entry)
        assert isinstance(entry["pid"], int)
        assert entry["port"] == port
    assert report["components"]["api"]["state"] == "stopped"
    gateway = report["components"]["gateway"]
    assert (gateway["ae_title"], gateway["metrics_port"]) == (
        "LIFECYCLE_GW",
        str(settings.gateway_metrics_port),
    )
    echo = subprocess.run(
        ["echoscu", "-aec", "LIFECYCLE_GW", "127.0.0.1", str(settings.dicom_port)],
        capture_output=True,
        timeout=30,
    )
    assert echo.returncode == 0, echo.stderr


def test_topics_exist_with_the_configured_partitions(local_stack: LocalStack) -> None:
    metadata = AdminClient({"bootstrap.servers": local_stack.bootstrap}).list_topics(timeout=10)
    for name in topics.ALL:
        assert name in metadata.topics, name
        assert len(metadata.topics[name].partitions) == PARTITIONS


def test_services_listen_on_loopback_with_redis_aof_on(local_stack: LocalStack) -> None:
    client = open_redis(local_stack.settings)
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("bind")["bind"] == "127.0.0.1"
    triton = local_stack.env["CXR_TRITON_HTTP_URL"]
    assert httpx.get(f"{triton}/v2/health/live", timeout=5).status_code == 200
    props = (local_stack.home / "kafka" / "server.properties").read_text()
    assert f"listeners=PLAINTEXT://{local_stack.bootstrap}," in props


def test_redis_refuses_a_client_without_the_generated_password(local_stack: LocalStack) -> None:
    secret = local_stack.home / "secrets" / "redis.password"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE((local_stack.home / "redis" / "redis.conf").stat().st_mode) == 0o600
    url = local_stack.env["CXR_REDIS_URL"]
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(url, socket_timeout=5).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(url, password="not-the-password", socket_timeout=5).ping()
    assert redis.Redis.from_url(url, password=secret.read_text().strip(), socket_timeout=5).ping()
    # The password reaches no command line: neither redis-server's nor its log's first line.
    record = PidFile(local_stack.home / "run", "redis").read()
    assert record is not None
    password = secret.read_text().strip()
    assert password not in Path(f"/proc/{record.pid}/cmdline").read_text()
    assert password not in (local_stack.home / "logs" / "redis.log").read_text()


def test_second_up_is_a_no_op(local_stack: LocalStack) -> None:
    before = {name: entry["pid"] for name, entry in local_stack.status()["components"].items()}
    out = local_stack.run("up", "--detach", "--only", SERVICES)
    assert "already running" in out
    after = {name: entry["pid"] for name, entry in local_stack.status()["components"].items()}
    assert after == before


def _produce(bootstrap: str, value: bytes) -> int:
    offsets: list[int | None] = []
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    producer.produce(
        topics.DLQ, value=value, partition=0, on_delivery=lambda err, msg: offsets.append(msg.offset())
    )
    assert producer.flush(15) == 0
    assert offsets and offsets[0] is not None
    return offsets[0]


def _read(bootstrap: str, offset: int) -> bytes | None:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4()}", "enable.auto.commit": False}
    )
    try:
        consumer.assign([TopicPartition(topics.DLQ, 0, offset)])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                value: bytes | None = msg.value()
                return value
        return None
    finally:
        consumer.close()


def test_down_stops_everything_and_up_keeps_kafka_data(local_stack: LocalStack) -> None:
    payload = f"kept across restarts {uuid.uuid4()}".encode()
    offset = _produce(local_stack.bootstrap, payload)
    password = (local_stack.home / "secrets" / "redis.password").read_text()
    records = local_stack.records()
    assert len(records) == 4

    out = local_stack.run("down")
    assert out.startswith("stopped:")
    for record in records:
        assert not is_alive(record), record.name
        assert group_members(record) == [], record.name
    assert not list((local_stack.home / "run").glob("*.pid"))
    assert {e["state"] for e in local_stack.status()["components"].values()} == {"stopped"}
    assert "nothing was running" in local_stack.run("down")

    out = local_stack.run("up", "--detach", "--only", SERVICES)
    assert "started" in out
    assert _read(local_stack.bootstrap, offset) == payload
    assert (local_stack.home / "secrets" / "redis.password").read_text() == password, "generated once"
    assert open_redis(local_stack.settings).ping()
