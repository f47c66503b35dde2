"""Verdicts and audit records through a real Kafka broker: published first, then the study leaves the list.

Verdicts, replays and amendments are read back from ``cxr.verdicts.v1``, audit records from ``cxr.audit.v1``;
a broker that goes down refuses verdicts with 503 and changes nothing, and the retries once it is back
publish the verdict once. The broker is the session's private
one (``kafka`` in conftest, see ``kafka_support``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from cxr_triage import topics
from cxr_triage.labels import LABELS
from cxr_triage.worklist.keys import WorklistKeys
from priority_queue_api.app import create_app
from priority_queue_api.config import ApiPolicy
from tests.integration.api_support import Api, api_settings, make_users, put_study
from tests.integration.conftest import RedisServer
from tests.integration.kafka_support import KafkaBroker, kafka_api, shared_jars, start_kafka, topic_size


@pytest.fixture()
def kapi(kafka: KafkaBroker, redis_server: RedisServer, tmp_path: Path) -> Iterator[Api]:
    with kafka_api(kafka, redis_server, tmp_path) as api:
        yield api


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
    # Keyed per (study, radiologist): compaction keeps each radiologist's latest reading.
    assert [e["_key"] for e in events] == [topics.verdict_key(study_id, e["radiologist"]) for e in events]
    assert event["idempotency_key"] and events[1]["idempotency_key"] != event["idempotency_key"]
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
    settings = api_settings(
        tmp_path, redis_server.port, keys.prefix, kafka_port=kafka.settings.kafka_address.port
    )
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


def test_kafka_down_refuses_verdicts_with_503_and_recovers(
    redis_server: RedisServer, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    jars = shared_jars(tmp_path_factory.getbasetemp())
    with start_kafka(tmp_path / "own-kafka", jars) as broker:
        keys = WorklistKeys("kdown")
        settings = api_settings(
            tmp_path, redis_server.port, keys.prefix, kafka_port=broker.settings.kafka_address.port
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
        # The retries after the outage asked Kafka before publishing the pending verdict: it is there once.
        assert topic_size(broker.bootstrap, topics.VERDICTS) == 1
