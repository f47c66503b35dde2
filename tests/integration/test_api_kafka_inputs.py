"""What clients send, against a real Kafka broker: uploads through the producer path, their limits, and a
property-based fuzz of the whole OpenAPI document. The broker is the session's private one (``kafka`` in
conftest, see ``kafka_support``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cxr_triage import topics
from cxr_triage.settings import Settings
from cxr_triage.worklist.keys import WorklistKeys
from priority_queue_api.app import create_app
from priority_queue_api.config import ApiPolicy
from tests.factories import dicom_bytes, jpeg_bytes, png_bytes
from tests.integration.api_support import Api, api_settings, make_users, prometheus_on, put_study, serve
from tests.integration.conftest import (
    REDIS_PASSWORD,
    RedisServer,
    _spawn_redis,
    free_port,
    wait_for_port,
)
from tests.integration.kafka_support import KafkaBroker, kafka_api, topic_size


@pytest.fixture()
def kapi(kafka: KafkaBroker, redis_server: RedisServer, tmp_path: Path) -> Iterator[Api]:
    with kafka_api(kafka, redis_server, tmp_path) as api:
        yield api


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
    # A DICOM study is named by the keyed pseudonym of its StudyInstanceUID, never by the UID.
    assert as_dicom.status_code == 202 and as_dicom.json()["study_id"].startswith("2.25.")
    assert "1.2.3.4.5" not in as_dicom.text


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
    assert ct.status_code == 422 and "CT Image Storage is not a chest radiograph" in ct.json()["detail"]
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
        r = redis.Redis(port=port, password=REDIS_PASSWORD, decode_responses=True)
        for i, priority in enumerate((0.95, 0.6, 0.2)):
            put_study(r, keys, f"study-{i}", priority)
        settings = api_settings(home, port, keys.prefix, kafka_port=kafka.settings.kafka_address.port)
        tokens = make_users(home)
        # Every peer up (Kafka, Redis, and Prometheus for /system): whatever a client sends, never a 5xx.
        with prometheus_on(home / "prometheus") as prometheus:
            settings = settings.model_copy(update={"prometheus_url": prometheus.url})
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
