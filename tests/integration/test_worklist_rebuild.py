"""Kafka as the system of record: the Redis worklist rebuilt from the topics equals the one that was lost.

First on a private Redis (no Kafka): the events the worker and the API produced, folded and applied by the
rebuild, give the very state the worker's and the API's own writes gave; applying twice changes nothing; a
worker replaying a study the rebuild marked read does not list it again; an older verdict never replaces a
newer one. Then the whole thing on a real stack (Kafka, Redis, Triton, worker) with verdicts through the API:
Redis wiped mid-stream (FLUSHALL, killed, AOF deleted, restarted), ``cxr-triage worklist rebuild`` run while
studies keep coming, and the worklist compared with the one before, study by study.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
from fastapi.testclient import TestClient

from cxr_triage.events import PredictionEventV1, StudyEventV1, VerdictEventV1
from cxr_triage.labels import LABELS
from cxr_triage.redis_client import open_redis
from cxr_triage.sla import TIERS, SlaPolicy, Tier
from cxr_triage.worklist.keys import WorklistKeys
from cxr_triage.worklist.rebuild import Projection, apply
from cxr_triage.worklist.verdicts import record_verdict
from inference_worker.worklist import RedisWorklist, WorklistEntry
from priority_queue_api.app import create_app
from priority_queue_api.config import ApiPolicy
from tests.integration.api_support import Api, make_users
from tests.integration.async_redis import async_redis
from tests.integration.conftest import RedisServer
from tests.integration.rebuild_support import of_studies, snapshot
from tests.integration.streaming import (
    Stream,
    StreamStack,
    make_studies,
    read_predictions,
    running_stream_stack,
    wait_until_committed,
)

pytestmark = pytest.mark.integration

POLICY = SlaPolicy()
T0 = datetime.now(UTC) - timedelta(minutes=30)


def _events(i: int, priority: float) -> tuple[StudyEventV1, PredictionEventV1]:
    sha = f"{i:064x}"
    study = StudyEventV1(
        study_id=f"s{i:03d}",
        image_uri=f"file:///images/{sha}.png",
        sha256=sha,
        content_type="image/png",
        size_bytes=10,
        received_at=T0 + timedelta(seconds=i),
    )
    prediction = PredictionEventV1(
        study_id=study.study_id,
        model_name="cxr_classifier",
        model_version="1",
        probabilities={label: priority for label in LABELS},
        priority=priority,
        received_at=study.received_at,
        scored_at=study.received_at + timedelta(seconds=1),
        tier=POLICY.tier_for(priority),
    )
    return study, prediction


def _verdict(study_id: str, who: str, n: int, *, minutes: float, amends: str | None = None) -> VerdictEventV1:
    return VerdictEventV1(
        verdict_id=f"{study_id}-{who}-{n}".ljust(8, "x"),
        kind="amendment" if amends else "verdict",
        amends=amends,
        study_id=study_id,
        radiologist=who,
        labels={label: int(label == LABELS[n % len(LABELS)]) for label in LABELS},
        model_name="cxr_classifier",
        model_version="1",
        received_at=T0,
        scored_at=T0,
        decided_at=T0 + timedelta(minutes=minutes),
        idempotency_key=f"key-{n}",
    )


@pytest.fixture()
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield c
    c.close()


def test_rebuild_gives_the_state_the_services_wrote_and_twice_changes_nothing(
    client: redis.Redis, redis_server: RedisServer
) -> None:
    scored = [_events(i, priority=(i * 37 % 100) / 100) for i in range(40)]
    verdicts = [
        _verdict("s001", "ana", 1, minutes=1),
        _verdict("s001", "ana", 2, minutes=2, amends="s001-ana-1"),
        _verdict("s001", "ben", 3, minutes=3),
        _verdict("s007", "ana", 4, minutes=4),
    ]
    live = WorklistKeys(f"live{uuid.uuid4().hex[:6]}")
    worker = RedisWorklist(client, live, policy=POLICY)
    worker.write([WorklistEntry(s, p) for s, p in scored])
    worker.mark_published([p.study_id for _, p in scored])  # as the worker does once Kafka acknowledged them
    with async_redis(redis_server.url) as aio:
        for verdict in verdicts:
            aio(record_verdict, keys=live, event=verdict)

    projection = Projection()
    for study, prediction in scored:
        projection.add_study(study)
        # a replay republished the stored prediction: the same event twice
        projection.add_prediction(prediction)
        projection.add_prediction(prediction)
    for verdict in reversed(verdicts):  # the partitions' order across radiologists is any order
        projection.add_verdict(verdict)
        projection.add_verdict(verdict)  # a retry's re-send
    rebuilt = WorklistKeys(f"rebuilt{uuid.uuid4().hex[:6]}")
    apply(client, keys=rebuilt, policy=POLICY, projection=projection)

    expected = snapshot(client, live.prefix)
    assert snapshot(client, rebuilt.prefix) == expected
    assert json.loads(expected["verdicts:s001"]["ana"])["verdict_id"] == "s001-ana-2"
    assert set(expected["verdict-keys:s001:ana"]) == {"key-1", "key-2"}
    assert expected["read"] == {
        "s001": (T0 + timedelta(minutes=1)).timestamp(),
        "s007": (T0 + timedelta(minutes=4)).timestamp(),
    }
    assert len(expected["worklist"]) == 38 and "s001" not in expected["worklist"]
    apply(client, keys=rebuilt, policy=POLICY, projection=projection)
    assert snapshot(client, rebuilt.prefix) == expected
    assert projection.summary() | {} == {
        "studies": 40,
        "predictions": 80,
        "verdicts": 8,
        "distinct_verdicts": 4,
        "unread": 38,
        "read": 2,
        "awaiting_score": 0,
        "skipped": 0,
    }


def test_a_worker_replaying_a_study_the_rebuild_marked_read_does_not_list_it(client: redis.Redis) -> None:
    keys = WorklistKeys(f"race{uuid.uuid4().hex[:6]}")
    study, prediction = _events(1, priority=0.9)
    projection = Projection()
    projection.add_verdict(_verdict(study.study_id, "ana", 1, minutes=1))  # its prediction was not yet read
    apply(client, keys=keys, policy=POLICY, projection=projection)
    outcome = RedisWorklist(client, keys, policy=POLICY).write([WorklistEntry(study, prediction)])
    assert outcome[0].status == "read"
    assert client.zscore(keys.worklist, study.study_id) is None
    assert all(client.zscore(keys.unread(t), study.study_id) is None for t in TIERS)
    assert client.hget(keys.study(study.study_id), "priority") == "0.9"


def test_an_older_verdict_never_replaces_a_newer_one(client: redis.Redis, redis_server: RedisServer) -> None:
    keys = WorklistKeys(f"older{uuid.uuid4().hex[:6]}")
    study, prediction = _events(2, priority=0.3)
    RedisWorklist(client, keys, policy=POLICY).write([WorklistEntry(study, prediction)])
    newer = _verdict(study.study_id, "ana", 2, minutes=9, amends="x" * 8)
    with async_redis(redis_server.url) as aio:
        aio(record_verdict, keys=keys, event=newer)  # the API, after Redis came back
    projection = Projection()
    projection.add_study(study)
    projection.add_prediction(prediction)
    projection.add_verdict(_verdict(study.study_id, "ana", 1, minutes=1))  # the rebuild, from the topic
    apply(client, keys=keys, policy=POLICY, projection=projection)
    assert (
        json.loads(client.hget(keys.verdicts(study.study_id), "ana") or "")["verdict_id"] == newer.verdict_id
    )
    assert set(client.hkeys(keys.verdict_keys(study.study_id, "ana"))) == {"key-1", "key-2"}
    # read since the first decision, whichever was recorded first
    assert client.zscore(keys.read, study.study_id) == (T0 + timedelta(minutes=1)).timestamp()


@pytest.fixture(scope="module")
def stream_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamStack]:
    env = {"CXR_INITIAL_MODEL_INPUT_SIZE": "64", "CXR_KAFKA_PARTITIONS": "2"}
    with running_stream_stack(tmp_path_factory, "rebuild", workers=1, env=env) as started:
        yield started


def _labels(*present: str) -> dict[str, int]:
    return {label: int(label in present) for label in LABELS}


def _read_some(api: Api, ids: list[str]) -> set[str]:
    """Verdicts through the API as radiologists give them: claimed first, or straight from the list; an
    amendment, a second radiologist, a client's Idempotency-Key, and its retry. Leaves no lease behind."""
    read: set[str] = set()
    for _ in range(3):
        claim = api.post("/worklist/claim")
        assert claim.status_code == 200, claim.text
        study_id = claim.json()["study_id"]
        saved = api.post(f"/studies/{study_id}/verdict", json={"labels": _labels("Edema")})
        assert saved.status_code == 200, saved.text
        read.add(study_id)
    direct = [s for s in ids if s not in read][:3]
    for study_id in direct:
        assert (
            api.post(f"/studies/{study_id}/verdict", json={"labels": _labels("No Finding")}).status_code
            == 200
        )
        read.add(study_id)
    amended = api.post(f"/studies/{direct[0]}/verdict", json={"labels": _labels("Pneumonia")}).json()
    assert amended["kind"] == "amendment"
    assert (
        api.post(f"/studies/{direct[0]}/verdict", user="rad2", json={"labels": _labels("Edema")}).status_code
        == 200
    )
    headers = api.auth("rad") | {"Idempotency-Key": str(uuid.uuid4())}
    keyed = next(s for s in ids if s not in read)
    for _ in range(2):
        response = api.client.post(
            f"/studies/{keyed}/verdict", json={"labels": _labels("Mass")}, headers=headers
        )
        assert response.status_code == 200, response.text
    read.add(keyed)
    return read


def _wipe_redis(target: StreamStack) -> None:
    """The worklist store lost for good: flushed, killed, its append-only files deleted, started empty."""
    client = open_redis(target.settings)
    client.flushall()
    client.close()
    target.kill("redis")
    data = target.settings.home / "redis"
    shutil.rmtree(data / "appendonlydir", ignore_errors=True)
    for leftover in data.glob("*.aof"):
        leftover.unlink()
    target.up()  # starts Redis again, empty; the worker's batches fail until then and are retried


def test_redis_wiped_mid_stream_is_rebuilt_from_kafka(stream_stack: StreamStack) -> None:
    target = stream_stack
    keys = WorklistKeys(target.settings.redis_key_prefix)
    studies = make_studies(target.folder, first=0, count=16)
    first = [s.study_id for s in studies]
    Stream(target, studies, per_s=8).start().join()
    wait_until_committed(target.settings)

    tokens = make_users(target.settings.home, suffix="")
    with TestClient(create_app(target.settings, policy=ApiPolicy(verdict_timeout_s=10.0))) as http:
        client = open_redis(target.settings, decode_responses=True)
        read = _read_some(Api(http, tokens, client, target.settings), first)
    before = of_studies(snapshot(client, keys.prefix), set(first))
    assert set(before["read"]) == read and len(before["worklist"]) == len(first) - len(read)

    second = make_studies(target.folder, first=100, count=24)
    stream = Stream(target, second, per_s=4).start()
    stream.wait_for(6)
    _wipe_redis(target)
    # gone: nothing writes verdicts or the first studies meanwhile (the worker committed them long ago)
    assert client.zcard(keys.read) == 0 and not client.exists(keys.study(first[0]))
    rebuilt = target.stack.cli("worklist", "rebuild", "--json")
    summary = json.loads(rebuilt.stdout)
    published = stream.join()
    wait_until_committed(target.settings)

    after = snapshot(client, keys.prefix)
    assert of_studies(after, set(first)) == before  # the first studies exactly as before the loss
    assert summary["read"] == len(read) and summary["studies"] >= len(first) + 6
    assert summary["unread"] + summary["awaiting_score"] + len(read) >= len(first) + 6

    # The studies that streamed through the loss: each once, unread, in one tier, as last published.
    predictions = read_predictions(target.settings, set(published))
    for study_id in published:
        last = predictions[study_id][-1]
        stored = after[f"study:{study_id}"]
        assert float(stored["priority"]) == last.priority == after["worklist"][study_id]
        assert stored["tier"] == (last.tier or Tier.ROUTINE).value
        assert [t for t in TIERS if study_id in after.get(f"unread:{t.value}", {})] == [Tier(stored["tier"])]
        assert study_id not in after["read"]
    assert set(after["worklist"]) == (set(first) - read) | set(published)
    assert set(after["read"]) == read

    again = json.loads(target.stack.cli("worklist", "rebuild", "--json").stdout)
    assert snapshot(client, keys.prefix) == after  # a second rebuild changes nothing
    assert again["awaiting_score"] == 0 and again["unread"] == len(after["worklist"])
    client.close()
