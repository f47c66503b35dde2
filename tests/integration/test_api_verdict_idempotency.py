"""Idempotent verdicts through a real Kafka broker and Redis: the ``Idempotency-Key`` header.

A retry with a recorded key is answered without a second event. A retry after Kafka acknowledged but the
Redis step failed (injected: the recording script fails once, and the note of the delivery with it or not)
completes the study without publishing again: the topic holds the verdict exactly once. A retry of a publish
Kafka never got (injected: the send fails) publishes it once; one that cannot ask Kafka is refused with 503.
Malformed keys are refused with 400, a key reused for another reading with 422.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from cxr_triage import topics
from cxr_triage.events import VerdictEventV1
from cxr_triage.labels import LABELS
from cxr_triage.worklist import verdicts as worklist_verdicts
from cxr_triage.worklist.keys import WorklistKeys
from priority_queue_api.events_out import DeliveryFailed, EventSink
from priority_queue_api.verdict_lookup import VerdictLookup
from tests.integration.api_support import Api, put_study
from tests.integration.conftest import RedisServer, free_port
from tests.integration.kafka_support import KafkaBroker, kafka_api

pytestmark = pytest.mark.integration


@pytest.fixture()
def kapi(kafka: KafkaBroker, redis_server: RedisServer, tmp_path: Path) -> Iterator[Api]:
    with kafka_api(kafka, redis_server, tmp_path) as api:
        yield api


def _labels(**present: int) -> dict[str, int]:
    return {label: present.get(label.replace(" ", "_"), 0) for label in LABELS}


def _study(api: Api) -> tuple[str, WorklistKeys]:
    keys = WorklistKeys(api.settings.redis_key_prefix)
    study_id = f"i-{uuid.uuid4().hex[:10]}"
    put_study(api.redis, keys, study_id, 0.7)
    return study_id, keys


def _events(kafka: KafkaBroker, study_id: str, at_least: int) -> list[dict[str, Any]]:
    def mine(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [v for v in found if v["study_id"] == study_id]

    return mine(kafka.read(topics.VERDICTS, lambda found: len(mine(found)) >= at_least))


def _all_events(kafka: KafkaBroker, study_id: str) -> list[dict[str, Any]]:
    """The study's verdict events, the topic read to its end offsets (so none is missed)."""
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": f"t-{uuid.uuid4()}"})
    try:
        meta = consumer.list_topics(topics.VERDICTS, timeout=10).topics[topics.VERDICTS]
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topics.VERDICTS, p), timeout=10)[1]
            for p in meta.partitions
        }
        consumer.assign([TopicPartition(topics.VERDICTS, p, OFFSET_BEGINNING) for p in ends])
        left = {p for p, end in ends.items() if end > 0}
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        while left:
            assert time.monotonic() < deadline, "could not read cxr.verdicts.v1 to its end"
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            key = msg.key()
            event = json.loads(msg.value() or b"{}") | {"_key": key.decode() if key else None}
            if event.get("study_id") == study_id:
                found.append(event)
            if (msg.offset() or 0) + 1 >= ends[msg.partition() or 0]:
                left.discard(msg.partition() or 0)
        return found
    finally:
        consumer.close()


def _verdict(api: Api, study_id: str, body: dict[str, Any], key: str | None) -> Any:
    headers = api.auth("rad") | ({"Idempotency-Key": key} if key is not None else {})
    return api.client.post(f"/studies/{study_id}/verdict", json=body, headers=headers)


def test_retry_with_a_recorded_key_is_answered_without_a_second_event(kapi: Api, kafka: KafkaBroker) -> None:
    study_id, _ = _study(kapi)
    key = str(uuid.uuid4())
    body = {"labels": _labels(Edema=1), "note": "left base"}
    first = _verdict(kapi, study_id, body, key)
    assert first.status_code == 200, first.text
    assert first.json()["replayed"] is False and first.json()["idempotency_key"] == key
    again = _verdict(kapi, study_id, body, f'"{key}"')  # the draft's quoted form names the same key
    assert again.status_code == 200, again.text
    assert again.json() | {"replayed": False} == first.json() and again.json()["replayed"] is True
    assert kapi.get(f"/studies/{study_id}").json()["status"] == "read"

    mine = _all_events(kafka, study_id)
    assert len(mine) == 1 and mine[0]["verdict_id"] == first.json()["verdict_id"]
    assert mine[0]["idempotency_key"] == key and mine[0]["_key"] == topics.verdict_key(study_id, "rad")


def _fail_once(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, error: Exception) -> list[str]:
    """Make ``owner.name`` (an async function taking ``event=``) raise ``error`` once; returns the ids it saw."""
    real = getattr(owner, name)
    failures: list[str] = []

    async def fail_once(*args: Any, **kwargs: Any) -> Any:
        if not failures:
            event = kwargs["event"] if "event" in kwargs else args[-1]
            failures.append(event.verdict_id)
            raise error
        return await real(*args, **kwargs)

    monkeypatch.setattr(owner, name, fail_once)
    return failures


def _exactly_one(kafka: KafkaBroker, study_id: str, verdict_id: str) -> None:
    events = _all_events(kafka, study_id)
    assert [e["verdict_id"] for e in events] == [verdict_id], events


@pytest.mark.parametrize("noted", [True, False], ids=["ack-noted", "ack-not-noted"])
@pytest.mark.parametrize("with_key", [True, False], ids=["client-key", "derived-key"])
def test_retry_after_kafka_acked_but_redis_failed_completes_without_a_second_event(
    kapi: Api, kafka: KafkaBroker, monkeypatch: pytest.MonkeyPatch, with_key: bool, noted: bool
) -> None:
    study_id, keys = _study(kapi)
    assert kapi.post("/worklist/claim").json()["study_id"] == study_id
    key = str(uuid.uuid4()) if with_key else None
    body = {"labels": _labels(Cardiomegaly=1), "uncertain": ["Cardiomegaly"]}

    gone = redis.ConnectionError("injected: Redis went away after Kafka's ack")
    failures = _fail_once(monkeypatch, worklist_verdicts, "record_verdict", gone)
    if not noted:  # Redis already gone for the note of the delivery: the retry must ask Kafka
        _fail_once(monkeypatch, worklist_verdicts, "mark_delivered", gone)
    failed = _verdict(kapi, study_id, body, key)
    assert failed.status_code == 503, failed.text
    assert failures, "the fault was not injected"
    # Kafka has the verdict; Redis does not yet: the study is still the radiologist's, unread.
    assert _events(kafka, study_id, 1)[0]["verdict_id"] == failures[0]
    detail = kapi.get(f"/studies/{study_id}").json()
    assert detail["status"] == "claimed" and detail["verdicts"] == []
    # The pending event, with the note of its delivery or without it.
    assert kapi.redis.hlen(keys.verdict_pending(study_id, "rad")) == (2 if noted else 1)

    retried = _verdict(kapi, study_id, body, key)
    assert retried.status_code == 200, retried.text
    assert retried.json()["verdict_id"] == failures[0] and retried.json()["replayed"] is False
    detail = kapi.get(f"/studies/{study_id}").json()
    assert detail["status"] == "read" and [v["verdict_id"] for v in detail["verdicts"]] == failures
    assert kapi.get("/worklist").json()["items"] == []
    assert not kapi.redis.exists(keys.verdict_pending(study_id, "rad"))

    third = _verdict(kapi, study_id, body, key)  # and a third try is a replay of the record
    assert third.json()["replayed"] is True and third.json()["verdict_id"] == failures[0]
    _exactly_one(kafka, study_id, failures[0])


def test_retry_after_a_publish_kafka_never_acknowledged_publishes_it_once(
    kapi: Api, kafka: KafkaBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pending event is kept, but the send failed before reaching Kafka: the retry finds it missing
    from the topic and publishes it, once."""
    study_id, keys = _study(kapi)
    key = str(uuid.uuid4())
    body = {"labels": _labels(Edema=1), "note": "bilateral"}
    failures = _fail_once(
        monkeypatch, EventSink, "deliver", DeliveryFailed("injected: no acknowledgement, nothing sent")
    )
    failed = _verdict(kapi, study_id, body, key)
    assert failed.status_code == 503 and "nothing was recorded" in failed.json()["detail"]
    assert failures and kapi.redis.hlen(keys.verdict_pending(study_id, "rad")) == 1
    assert _all_events(kafka, study_id) == []
    assert kapi.get(f"/studies/{study_id}").json()["status"] == "unclaimed"  # the hold was undone

    retried = _verdict(kapi, study_id, body, key)
    assert retried.status_code == 200, retried.text
    assert retried.json()["verdict_id"] == failures[0]
    assert kapi.get(f"/studies/{study_id}").json()["status"] == "read"
    assert not kapi.redis.exists(keys.verdict_pending(study_id, "rad"))
    _exactly_one(kafka, study_id, failures[0])


def test_retry_when_kafka_cannot_be_asked_is_refused_with_503_and_publishes_nothing(
    kapi: Api, kafka: KafkaBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pending event without a noted delivery, and the topic unreachable for the check: 503, not a blind
    publish; once Kafka answers, the retry publishes it once."""
    study_id, keys = _study(kapi)
    key = str(uuid.uuid4())
    body = {"labels": _labels(Pneumonia=1)}
    failures = _fail_once(monkeypatch, EventSink, "deliver", DeliveryFailed("injected: no acknowledgement"))
    assert _verdict(kapi, study_id, body, key).status_code == 503 and failures

    state = kapi.client.app.state
    working = state.verdict_lookup
    state.verdict_lookup = VerdictLookup(f"127.0.0.1:{free_port()}", timeout_s=2.0)  # nobody listens
    refused = _verdict(kapi, study_id, body, key)
    assert refused.status_code == 503 and "could not be asked" in refused.json()["detail"]
    assert kapi.get(f"/studies/{study_id}").json()["status"] == "unclaimed"
    assert kapi.redis.hlen(keys.verdict_pending(study_id, "rad")) == 1
    assert _all_events(kafka, study_id) == []

    state.verdict_lookup = working
    saved = _verdict(kapi, study_id, body, key)
    assert saved.status_code == 200, saved.text
    assert kapi.get(f"/studies/{study_id}").json()["status"] == "read"
    _exactly_one(kafka, study_id, failures[0])


@pytest.mark.parametrize("bad", ["", "two words", "x" * 129, "caf\u00e9".encode()], ids=str)
def test_malformed_key_is_refused_with_400_and_changes_nothing(kapi: Api, bad: str | bytes) -> None:
    study_id, _ = _study(kapi)
    headers = kapi.auth("rad") | {"Idempotency-Key": bad}
    response = kapi.client.post(
        f"/studies/{study_id}/verdict", json={"labels": _labels(No_Finding=1)}, headers=headers
    )
    assert response.status_code == 400, response.text
    assert "Idempotency-Key must be 1 to 128 visible ASCII" in response.json()["detail"]
    assert kapi.get(f"/studies/{study_id}").json()["status"] == "unclaimed"


def test_same_key_with_another_reading_is_refused_with_422(kapi: Api, kafka: KafkaBroker) -> None:
    study_id, _ = _study(kapi)
    key = str(uuid.uuid4())
    assert _verdict(kapi, study_id, {"labels": _labels(Edema=1)}, key).status_code == 200
    for changed in ({"labels": _labels(Edema=0)}, {"labels": _labels(Edema=1), "agreed_with_model": True}):
        refused = _verdict(kapi, study_id, changed, key)
        assert refused.status_code == 422, refused.text
        assert "different verdict" in refused.json()["detail"]
    detail = kapi.get(f"/studies/{study_id}").json()
    assert len(detail["verdicts"]) == 1 and detail["verdicts"][0]["kind"] == "verdict"
    assert len(_all_events(kafka, study_id)) == 1


def test_without_a_key_going_back_to_an_amended_reading_is_a_new_amendment(
    kapi: Api, kafka: KafkaBroker
) -> None:
    study_id, keys = _study(kapi)
    a, b = {"labels": _labels(Edema=1)}, {"labels": _labels(Edema=1, Pneumonia=1)}
    first = _verdict(kapi, study_id, a, None).json()
    second = _verdict(kapi, study_id, b, None).json()
    third = _verdict(kapi, study_id, a, None).json()
    assert (second["kind"], second["amends"]) == ("amendment", first["verdict_id"])
    assert (third["kind"], third["amends"], third["replayed"]) == ("amendment", second["verdict_id"], False)
    assert len({first["verdict_id"], second["verdict_id"], third["verdict_id"]}) == 3
    latest = VerdictEventV1.from_bytes(kapi.redis.hget(keys.verdicts(study_id), "rad") or "")
    assert latest.verdict_id == third["verdict_id"]
    assert [e["verdict_id"] for e in _all_events(kafka, study_id)] == [
        first["verdict_id"],
        second["verdict_id"],
        third["verdict_id"],
    ]
