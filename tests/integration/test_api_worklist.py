"""The worklist API against a real redis-server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from cxr_triage.labels import LABELS
from cxr_triage.redis_keys import RedisKeys
from cxr_triage.settings import Settings
from priority_queue_api.app import create_app
from tests.integration.conftest import RedisServer

KEYS = RedisKeys("apitest")


def _put_study(r: redis.Redis, study_id: str, priority: float) -> None:
    probabilities = {label: round(priority / 2, 3) for label in LABELS}
    r.hset(
        KEYS.study(study_id),
        mapping={
            "study_id": study_id,
            "priority": str(priority),
            "probabilities": json.dumps(probabilities),
            "model_name": "cxr_classifier",
            "model_version": "1",
            "received_at": "2026-11-26T10:00:00+00:00",
            "scored_at": "2026-11-26T10:00:01.250000+00:00",
            "image_uri": "file:///nowhere",
            "content_type": "image/png",
            "sha256": "0" * 64,
        },
    )
    r.zadd(KEYS.worklist, {study_id: priority})


@pytest.fixture()
def client(redis_server: RedisServer, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(home=tmp_path, redis_port=redis_server.port, redis_key_prefix=KEYS.prefix)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_worklist_is_ordered_by_priority_and_paginated(client: TestClient, redis_server: RedisServer) -> None:
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    for i, priority in enumerate([0.2, 0.9, 0.5, 0.7]):
        _put_study(r, f"study-{i}", priority)

    body = client.get("/worklist", params={"limit": 3}).json()
    assert body["total"] == 4
    assert [item["study_id"] for item in body["items"]] == ["study-1", "study-3", "study-2"]
    first = body["items"][0]
    assert list(first["probabilities"]) == list(LABELS)
    assert first["model_version"] == "1" and first["priority"] == pytest.approx(0.9)
    assert first["scored_at"].startswith("2026-11-26T10:00:01.25")

    rest = client.get("/worklist", params={"limit": 3, "offset": 3}).json()
    assert [item["study_id"] for item in rest["items"]] == ["study-0"]


def test_study_lookup_and_clear_errors(client: TestClient, redis_server: RedisServer) -> None:
    _put_study(redis.Redis.from_url(redis_server.url, decode_responses=True), "s1", 0.4)
    assert client.get("/studies/s1").json()["priority"] == pytest.approx(0.4)

    missing = client.get("/studies/nope")
    assert missing.status_code == 404
    assert "not on the worklist" in missing.json()["detail"]
    assert client.get("/studies/bad$id").status_code == 422
    assert client.get("/worklist", params={"limit": 0}).status_code == 422


def test_redis_down_gives_503_with_a_message_and_recovers(
    client: TestClient, redis_server: RedisServer
) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "redis": "ok"}
    redis_server.stop()
    down = client.get("/worklist")
    assert down.status_code == 503
    assert "Redis" in down.json()["detail"]
    assert client.get("/healthz").status_code == 503

    redis_server.start()
    assert client.get("/worklist").status_code == 200
    assert client.get("/healthz").status_code == 200


def test_metrics_count_requests_by_route(client: TestClient) -> None:
    client.get("/worklist")
    client.get("/studies/unknown-study")
    text = client.get("/metrics").text
    assert 'cxr_api_requests_total{method="GET",route="/worklist",status="200"} 1.0' in text
    assert 'route="/studies/{study_id}",status="404"' in text
    assert "unknown-study" not in text
