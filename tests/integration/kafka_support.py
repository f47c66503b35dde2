"""A private Kafka broker for the API's integration tests (and the browser test), and reading topics back.

The broker is started from the jars with ``deploy.kafka_broker`` on free loopback ports: uploads publish to
``cxr.studies.v1``, which must not reach the shared stack's worker and change what its tests count.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from fastapi.testclient import TestClient

from cxr_triage.settings import Settings
from cxr_triage.worklist.keys import WorklistKeys
from deploy.kafka_jars import ensure_kafka_jars, jars_present
from priority_queue_api.app import create_app
from priority_queue_api.config import ApiPolicy
from tests.integration.api_support import Api, api_settings, make_users
from tests.integration.conftest import RedisServer, free_port, wait_for_port

REPO = Path(__file__).resolve().parents[2]


@dataclass
class KafkaBroker:
    settings: Settings
    process: subprocess.Popen[bytes]

    def start(self) -> None:
        """(Re)launch the broker with its settings and storage; returns once it serves the topics."""
        from deploy import kafka_broker

        launch = kafka_broker.prepare(self.settings)
        with open(self.settings.logs_dir / "kafka.out", "ab") as out:
            self.process = subprocess.Popen(launch.argv, cwd=launch.cwd, stdout=out, stderr=subprocess.STDOUT)
        wait_for_port(self.settings.kafka_address.port, timeout_s=90)
        kafka_broker.ensure_topics(self.settings, timeout_s=60)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    @property
    def bootstrap(self) -> str:
        return self.settings.kafka_bootstrap_servers

    def read(
        self, topic: str, until: Callable[[list[dict[str, Any]]], bool], timeout_s: float = 20.0
    ) -> list[dict[str, Any]]:
        return read_topic(self.bootstrap, topic, until, timeout_s=timeout_s)


def read_topic(
    bootstrap: str,
    topic: str,
    until: Callable[[list[dict[str, Any]]], bool],
    *,
    timeout_s: float = 20.0,
    timestamps: bool = False,
) -> list[dict[str, Any]]:
    """Messages of ``topic`` from its start, read until ``until(messages)`` holds or time runs out.

    Each message is its JSON value with ``_key``, and with ``timestamps`` its Kafka timestamp in seconds as
    ``_ts`` (when the producer sent it).

    Every partition is assigned from its beginning rather than subscribed: a group rebalance on a loaded
    machine would hand the partitions back from the start (nothing is committed) and deliver records twice.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    try:
        assign_from_start(consumer, topic)
        while not until(found) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None and (value := msg.value()) is not None:
                key = msg.key()
                extra: dict[str, Any] = {"_key": key.decode() if key else None}
                if timestamps:
                    extra["_ts"] = msg.timestamp()[1] / 1000
                found.append(json.loads(value) | extra)
    finally:
        consumer.close()
    return found


def assign_from_start(consumer: Consumer, topic: str) -> None:
    """Read every partition of ``topic`` from its beginning, outside any group's rebalances."""
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])


def topic_size(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"size-{uuid.uuid4()}"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in meta.partitions
        )
    finally:
        consumer.close()


def shared_jars(base: Path) -> Path:
    """The broker's jars: those ``make setup`` put under .stack, else resolved once for the test session."""
    for libs in (REPO / ".stack" / "kafka" / "libs", base / "kafka-libs"):
        if jars_present(libs):
            return libs
    return ensure_kafka_jars(base / "kafka-libs")


@contextlib.contextmanager
def start_kafka(home: Path, jars: Path) -> Iterator[KafkaBroker]:
    """A single-node KRaft broker on free loopback ports with every cxr topic, stopped on exit."""
    (home / "kafka").mkdir(parents=True, exist_ok=True)
    (home / "kafka" / "libs").symlink_to(jars, target_is_directory=True)
    settings = Settings(
        home=home,
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
        kafka_controller_port=free_port(),
        kafka_partitions=2,
        kafka_heap="384m",
    )
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    broker = KafkaBroker(settings, subprocess.Popen(["true"]))
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


@contextlib.contextmanager
def kafka_api(kafka: KafkaBroker, redis_server: RedisServer, tmp_path: Path) -> Iterator[Api]:
    """The API on its own key prefix, publishing to ``kafka``, with the upload limits the tests probe."""
    keys = WorklistKeys(f"k{uuid.uuid4().hex[:8]}")
    settings = api_settings(
        tmp_path, redis_server.port, keys.prefix, kafka_port=kafka.settings.kafka_address.port
    )
    tokens = make_users(tmp_path)
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    policy = ApiPolicy(
        verdict_timeout_s=10.0,
        upload_timeout_s=10.0,
        max_upload_bytes=2_000_000,
        max_upload_pixels=1024 * 1024,
    )
    with TestClient(create_app(settings, policy=policy)) as client:
        yield Api(client, tokens, r, settings)
