"""The API's Kafka side against a real broker: verdicts, amendments, audit records, uploads, and a fuzz test.

The broker is private to this module (started from the jars with ``deploy.kafka_broker``): uploads publish to
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
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import schemathesis
from confluent_kafka import Consumer, TopicPartition
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cxr_triage import topics
from cxr_triage.labels import LABELS
from cxr_triage.settings import Settings
from cxr_triage.worklist_index import WorklistKeys
from deploy.kafka_jars import ensure_kafka_jars, jars_present
from priority_queue_api.app import create_app
from priority_queue_api.config import ApiPolicy
from tests.factories import dicom_bytes, jpeg_bytes, png_bytes
from tests.integration.conftest import RedisServer, _spawn_redis, free_port, wait_for_port
from tests.integration.test_api_worklist import Api, api_settings, make_users, put_study, serve

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
        wait_for_port(self.settings.kafka_port, timeout_s=90)
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
        return self.settings.kafka_bootstrap

    def read(
        self, topic: str, until: Callable[[list[dict[str, Any]]], bool], timeout_s: float = 20.0
    ) -> list[dict[str, Any]]:
        return read_topic(self.bootstrap, topic, until, timeout_s=timeout_s)


def read_topic(
    bootstrap: str, topic: str, until: Callable[[list[dict[str, Any]]], bool], *, timeout_s: float = 20.0
) -> list[dict[str, Any]]:
    """Messages of ``topic`` from its start, read until ``until(messages)`` holds or time runs out."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not until(found) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None and (value := msg.value()) is not None:
                key = msg.key()
                found.append(json.loads(value) | {"_key": key.decode() if key else None})
    finally:
        consumer.close()
    return found


def topic_size(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"size-{uuid.uuid4()}"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in meta.partitions
        )
    finally:
        consumer.close()


def _shared_jars(base: Path) -> Path:
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
        kafka_port=free_port(),
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


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    base = tmp_path_factory.getbasetemp()
    with start_kafka(tmp_path_factory.mktemp("kafka-home"), _shared_jars(base)) as broker:
        yield broker


@pytest.fixture()
def kapi(kafka: KafkaBroker, redis_server: RedisServer, tmp_path: Path) -> Iterator[Api]:
    keys = WorklistKeys(f"k{uuid.uuid4().hex[:8]}")
    settings = api_settings(tmp_path, redis_server.port, keys.prefix, kafka_port=kafka.settings.kafka_port)
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


def _labels(**present: int) -> dict[str, int]:
    return {label: present.get(label.replace(" ", "_"), 0) for label in LABELS}


def _verdicts_for(kafka: KafkaBroker, study_id: str, expected: int) -> list[dict[str, Any]]:
    def mine_of(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [v for v in found if v["study_id"] == study_id]

    mine = mine_of(kafka.read(topics.VERDICTS, lambda found: len(mine_of(found)) >= expected))
    assert len(mine) == expected, mine
    return sorted(mine, key=lambda v: v["decided_at"])


def test_verdict_is_published_then_the_study_leaves_the_list(kapi: Api, kafka: KafkaBroker) -> None:
    study_id = f"v-{uuid.uuid4().hex[:8]}"
    keys = WorklistKeys(kapi.settings.redis_key_prefix)
    put_study(kapi.redis, keys, study_id, 0.9)
    put_study(kapi.redis, keys, f"{study_id}-other", 0.1)
    claim = kapi.post("/worklist/claim").json()
    assert claim["study_id"] == study_id

    body = {"labels": _labels(Edema=1, Pleural_Effusion=1), "uncertain": ["Edema"], "note": "small effusion"}
    first = kapi.post(f"/studies/{study_id}/verdict", json=body)
    assert first.status_code == 200, first.text
    verdict = first.json()
    assert verdict["kind"] == "verdict" and verdict["replayed"] is False and verdict["amends"] is None

    listed = [item["study_id"] for item in kapi.get("/worklist").json()["items"]]
    assert listed == [f"{study_id}-other"]
    detail = kapi.get(f"/studies/{study_id}").json()
    assert detail["status"] == "read" and detail["read_at"] is not None
    assert [v["verdict_id"] for v in detail["verdicts"]] == [verdict["verdict_id"]]

    # Same verdict again: answered from the record, no new event.
    again = kapi.post(f"/studies/{study_id}/verdict", json=body).json()
    assert again["replayed"] is True and again["verdict_id"] == verdict["verdict_id"]
    # A different one from the same radiologist: an amendment naming the first.
    amended = kapi.post(f"/studies/{study_id}/verdict", json=body | {"uncertain": []}).json()
    assert amended["kind"] == "amendment" and amended["amends"] == verdict["verdict_id"]
    # Another radiologist's reading of a read study is a verdict of its own.
    second = kapi.post(f"/studies/{study_id}/verdict", user="rad2", json=body).json()
    assert second["kind"] == "verdict" and second["radiologist"] == "rad2"

    events = _verdicts_for(kafka, study_id, expected=3)
    assert [(e["radiologist"], e["kind"]) for e in events] == [
        ("rad", "verdict"),
        ("rad", "amendment"),
        ("rad2", "verdict"),
    ]
    event = events[0]
    assert event["_key"] == study_id
    assert event["labels"]["Edema"] == 1 and event["labels"]["Cardiomegaly"] == 0
    assert list(event["labels"]) == list(LABELS)
    assert event["uncertain"] == ["Edema"] and event["note"] == "small effusion"
    assert event["model_name"] == "cxr_classifier" and event["model_version"] == "1"
    assert event["claimed_at"] is not None and event["decided_at"] >= event["claimed_at"]
    assert event["received_at"] <= event["scored_at"]
    assert events[1]["amends"] == event["verdict_id"]


def test_audit_records_each_view_claim_release_verdict_and_denial(
    kafka: KafkaBroker, redis_server: RedisServer, tmp_path: Path
) -> None:
    keys = WorklistKeys(f"audit{uuid.uuid4().hex[:8]}")
    settings = api_settings(tmp_path, redis_server.port, keys.prefix, kafka_port=kafka.settings.kafka_port)
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    study_id = f"a-{uuid.uuid4().hex[:8]}"
    put_study(r, keys, study_id, 0.5)
    suffix = f"-{uuid.uuid4().hex[:6]}"  # names no other test uses on the shared topic
    tokens = make_users(tmp_path, suffix)
    with TestClient(create_app(settings, policy=ApiPolicy(verdict_timeout_s=10.0))) as client:
        api = Api(client, tokens, r, settings)
        api.get("/worklist")
        api.get(f"/studies/{study_id}")
        api.post("/worklist/claim")
        api.post(f"/studies/{study_id}/release")
        api.post("/worklist/claim")
        api.post(f"/studies/{study_id}/verdict", json={"labels": _labels(No_Finding=1)})
        api.post(f"/studies/{study_id}/verdict", json={"labels": _labels(Edema=1)})
        api.get("/studies/unknown-one")
        api.get("/worklist", user="prod")
        api.get("/worklist", user="eng")
    # The client has stopped the app: its shutdown flushed the audit producer.

    def relevant(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in found if e["actor"].endswith(suffix)]

    records = relevant(kafka.read(topics.AUDIT, lambda found: len(relevant(found)) >= 11))
    # Keyed by actor: each actor's records are in order; across actors (partitions) they need not be.
    seen = [
        (e["actor"].removesuffix(suffix), e["action"], e["resource"], e.get("study_id"), e["outcome"])
        for e in sorted(records, key=lambda e: e["actor"])
    ]
    assert seen == sorted(
        [
            ("rad", "view", "worklist", None, "ok"),
            ("rad", "view", "study", study_id, "ok"),
            ("rad", "claim", "worklist", study_id, "ok"),
            ("rad", "release", "study", study_id, "ok"),
            ("rad", "claim", "worklist", study_id, "ok"),
            ("rad", "verdict", "study", study_id, "ok"),
            ("rad", "verdict", "study", study_id, "ok"),
            ("rad", "amend", "verdict", study_id, "ok"),
            ("rad", "view", "study", "unknown-one", "not_found"),
            ("prod", "view", "/worklist", None, "denied"),
            ("eng", "view", "worklist", None, "ok"),
        ],
        key=lambda t: t[0],
    ), seen
    assert all(e["role"] in ("radiologist", "producer", "engineer") and e["at"] for e in records)
    assert all("note" not in e and "image_uri" not in e for e in records)


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def test_upload_goes_through_the_producer_path(kapi: Api, kafka: KafkaBroker) -> None:
    data = png_bytes(seed=int(time.time()) % 1000, size=256)
    response = kapi.client.post(
        "/studies", content=data, headers=kapi.auth("prod") | {"Content-Type": "image/png"}
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["content_type"] == "image/png" and body["size_bytes"] == len(data)
    assert body["study_id"] == body["sha256"]

    def mine(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in found if e["study_id"] == body["study_id"]]

    studies = mine(kafka.read(topics.STUDIES, lambda found: bool(mine(found))))
    assert len(studies) == 1
    assert studies[0]["source"] == "api/prod" and studies[0]["_key"] == body["study_id"]
    stored = Path(studies[0]["image_uri"].removeprefix("file://"))
    assert stored.read_bytes() == data and stored.is_relative_to(kapi.settings.image_store_dir)

    dicom = dicom_bytes(study_uid="1.2.3.4.5")
    as_dicom = kapi.client.post("/studies", content=dicom, headers=kapi.auth("prod"))
    assert as_dicom.status_code == 202 and as_dicom.json()["study_id"] == "1.2.3.4.5"


def test_upload_limits_refuse_with_413_or_422(kapi: Api, kafka: KafkaBroker) -> None:
    def post(data: bytes) -> Any:
        return kapi.client.post("/studies", content=data, headers=kapi.auth("prod"))

    dlq_before = topic_size(kafka.bootstrap, topics.DLQ)
    too_big = post(b"\x89PNG\r\n\x1a\n" + b"0" * 2_000_001)
    assert too_big.status_code == 413 and "byte limit" in too_big.json()["detail"]

    too_wide = post(png_bytes(size=1100))  # 1.21 MP, over the test policy's 1 MP
    assert too_wide.status_code == 413 and "pixel limit" in too_wide.json()["detail"]

    bomb = post(_png_header_only(width=100_000, height=100_000))
    assert bomb.status_code == 413 and "decompression bomb" in bomb.json()["detail"]

    truncated = post(jpeg_bytes(3)[:300])
    assert truncated.status_code == 422 and "truncated" in truncated.json()["detail"]
    text = post(b"hello, not an image" * 20)
    assert text.status_code == 422 and "not a PNG, JPEG or DICOM" in text.json()["detail"]
    ct = post(dicom_bytes(modality="CT"))
    assert ct.status_code == 422 and "not a radiograph" in ct.json()["detail"]
    assert post(b"").status_code == 422

    # Only what passed the API's own caps reached the producer path, which dead-letters its rejections.
    dead = kafka.read(topics.DLQ, lambda found: len(found) >= dlq_before + 3)
    assert len(dead) == dlq_before + 3  # truncated, not an image, CT; not the empty body nor the caps
    assert all(e["stage"] == "producer" for e in dead)


def _png_header_only(*, width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR declaring a huge image, with almost no data: a decompression bomb."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )


def test_kafka_down_refuses_verdicts_with_503_and_recovers(
    redis_server: RedisServer, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    jars = _shared_jars(tmp_path_factory.getbasetemp())
    with start_kafka(tmp_path / "own-kafka", jars) as broker:
        keys = WorklistKeys("kdown")
        settings = api_settings(
            tmp_path, redis_server.port, keys.prefix, kafka_port=broker.settings.kafka_port
        )
        tokens = make_users(tmp_path)
        r = redis.Redis.from_url(redis_server.url, decode_responses=True)
        put_study(r, keys, "s1", 0.9)
        policy = ApiPolicy(verdict_timeout_s=3.0, shutdown_flush_s=1.0)
        with TestClient(create_app(settings, policy=policy)) as client:
            api = Api(client, tokens, r, settings)
            assert api.post("/worklist/claim").json()["study_id"] == "s1"
            body = {"labels": _labels(Edema=1)}

            broker.stop()
            down = api.post("/studies/s1/verdict", json=body)
            assert down.status_code == 503 and "nothing was recorded" in down.json()["detail"]
            study = api.get("/studies/s1").json()
            assert study["status"] == "claimed" and study["verdicts"] == []  # nothing changed

            broker.start()
            deadline = time.monotonic() + 60
            saved = api.post("/studies/s1/verdict", json=body)
            while saved.status_code == 503 and time.monotonic() < deadline:
                saved = api.post("/studies/s1/verdict", json=body)
            assert saved.status_code == 200, saved.text
            assert api.get("/studies/s1").json()["status"] == "read"
        found = broker.read(topics.VERDICTS, lambda found: any(e["study_id"] == "s1" for e in found))
        assert [e["radiologist"] for e in found if e["study_id"] == "s1"][-1] == "rad"


# --- Property-based fuzzing of the whole OpenAPI document: whatever a client sends, never a 5xx. ---


@dataclass
class FuzzTarget:
    base_url: str
    tokens: dict[str, str]


@pytest.fixture(scope="module")
def fuzz_target(kafka: KafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    home = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    redis_proc = _spawn_redis(port, home)
    try:
        wait_for_port(port)
        keys = WorklistKeys("fuzz")
        r = redis.Redis(port=port, decode_responses=True)
        for i, priority in enumerate((0.95, 0.6, 0.2)):
            put_study(r, keys, f"study-{i}", priority)
        settings = api_settings(home, port, keys.prefix, kafka_port=kafka.settings.kafka_port)
        tokens = make_users(home)
        with serve(create_app(settings, policy=ApiPolicy(verdict_timeout_s=10.0))) as base:
            yield FuzzTarget(base, tokens)
    finally:
        redis_proc.terminate()
        redis_proc.wait(timeout=10)


# The document is the app's own (building the app starts nothing); requests go to the live server.
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_openapi_fuzz_never_answers_5xx(case: Any, fuzz_target: FuzzTarget) -> None:
    # Each operation is fuzzed as the role allowed to call it; schemathesis also tries without a token.
    role = "prod" if (case.method.upper(), case.path) == ("POST", "/studies") else "rad"
    headers = {"Authorization": f"Bearer {fuzz_target.tokens[role]}"}
    # FastAPI ignores unknown query parameters by design, so "negative data rejection" is not asserted;
    # what is: no server error, and every answer is one the document declares, in its declared shape.
    case.call_and_validate(base_url=fuzz_target.base_url, headers=headers, checks=FUZZ_CHECKS)


FUZZ_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
