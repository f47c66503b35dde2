"""The worker's worklist scripts (upsert, index) on a real redis-server (its own port, no persistence)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import redis

from cxr_triage.cams import encode_cams
from cxr_triage.events import ImagePredictionV1, PredictionEventV1, StudyEventV1
from cxr_triage.labels import LABELS, NUM_LABELS
from cxr_triage.redis_keys import RedisKeys
from cxr_triage.sla import SlaPolicy, Tier
from cxr_triage.worklist.claims import complete
from cxr_triage.worklist.keys import WorklistKeys
from deploy.testing import free_ports
from inference_worker.errors import StageUnavailable
from inference_worker.worklist import RedisWorklist, WorklistEntry
from tests.integration.async_redis import async_redis
from tests.study_images import study_entry

pytestmark = pytest.mark.integration

RECEIVED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
POLICY = SlaPolicy()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        pytest.fail("redis-server is not installed (apt-get install -y redis-server)")
    (port,) = free_ports(1)
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    yield url
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url, decode_responses=True)
    yield c
    c.close()


@pytest.fixture
def keys() -> RedisKeys:
    return RedisKeys(f"test-{uuid.uuid4().hex[:8]}")


def entry(
    study_id: str,
    *,
    version: str = "1",
    priority: float = 0.5,
    scored_at: datetime | None = None,
    tier: Tier | None = None,
) -> WorklistEntry:
    """A scored study as the worker hands it over; its tier is the fallback thresholds' unless given."""
    tier = tier or POLICY.tier_for(priority)
    sha = "ab" * 32
    study = StudyEventV1(
        study_id=study_id,
        image_uri=f"file:///images/ab/ab/{sha}.png",
        sha256=sha,
        content_type="image/png",
        size_bytes=10,
        received_at=RECEIVED,
    )
    prediction = PredictionEventV1(
        study_id=study_id,
        model_name="cxr_classifier",
        model_version=version,
        probabilities={label: priority for label in LABELS},
        priority=priority,
        received_at=RECEIVED,
        scored_at=scored_at or RECEIVED + timedelta(seconds=1),
        tier=tier,
    )
    return WorklistEntry(study, prediction)


def writer(client: redis.Redis, keys: RedisKeys) -> RedisWorklist:
    return RedisWorklist(client, keys, policy=POLICY)


def test_new_studies_are_written_to_hash_worklist_and_tier(client: redis.Redis, keys: RedisKeys) -> None:
    outcomes = writer(client, keys).write([entry("S-1", priority=0.9), entry("S-2", priority=0.2)])
    assert [(o.changed, o.status, o.priority) for o in outcomes] == [
        (True, "waiting", 0.9),
        (True, "waiting", 0.2),
    ]
    assert client.zrevrange(keys.worklist, 0, -1, withscores=True) == [("S-1", 0.9), ("S-2", 0.2)]
    index = WorklistKeys(keys.prefix)
    assert client.zrange(index.unread(Tier.CRITICAL), 0, -1) == ["S-1"]
    assert client.zrange(index.unread(Tier.ROUTINE), 0, -1) == ["S-2"]
    stored = client.hgetall(keys.study("S-1"))
    assert stored["study_id"] == "S-1" and stored["model_version"] == "1" and float(stored["priority"]) == 0.9
    assert list(json.loads(stored["probabilities"])) == list(LABELS)
    assert datetime.fromisoformat(stored["scored_at"]) == RECEIVED + timedelta(seconds=1)
    assert datetime.fromisoformat(stored["received_at"]) == RECEIVED
    assert stored["content_type"] == "image/png" and stored["sha256"] == "ab" * 32
    assert stored["model_name"] == "cxr_classifier" and stored["image_uri"].startswith("file://")
    assert stored["tier"] == "critical" and [o.tier for o in outcomes] == [Tier.CRITICAL, Tier.ROUTINE]


def test_the_tier_is_the_entrys_and_a_replay_keeps_the_first(client: redis.Redis, keys: RedisKeys) -> None:
    worklist = writer(client, keys)
    index = WorklistKeys(keys.prefix)
    (first,) = worklist.write([entry("S-1", priority=0.3, tier=Tier.CRITICAL)])  # a strict model's choice
    assert (first.changed, first.tier, first.status) == (True, Tier.CRITICAL, "waiting")
    assert client.hget(keys.study("S-1"), "tier") == "critical"
    assert client.zrange(index.unread(Tier.CRITICAL), 0, -1) == ["S-1"]

    (replay,) = worklist.write([entry("S-1", version="2", priority=0.3, tier=Tier.ROUTINE)])
    assert (replay.changed, replay.tier, replay.status) == (False, Tier.CRITICAL, "waiting")
    assert replay.applied_to(entry("S-1", priority=0.3).prediction).tier is Tier.CRITICAL
    assert client.zrange(index.unread(Tier.CRITICAL), 0, -1) == ["S-1"]
    assert client.zcard(index.unread(Tier.ROUTINE)) == 0

    # A hash written before it kept its tier takes the first tier given from then on.
    client.hdel(keys.study("S-1"), "tier")
    (old,) = worklist.write([entry("S-1", priority=0.3, tier=Tier.URGENT)])
    assert (old.changed, old.tier) == (False, Tier.URGENT)
    assert client.hget(keys.study("S-1"), "tier") == "urgent"
    assert client.zrange(index.unread(Tier.URGENT), 0, -1) == ["S-1"]


def test_replay_by_the_same_version_changes_nothing(client: redis.Redis, keys: RedisKeys) -> None:
    worklist = writer(client, keys)
    worklist.write([entry("S-1", priority=0.9)])
    index = WorklistKeys(keys.prefix)
    before = client.hgetall(keys.study("S-1"))
    filed = client.zrange(index.unread(Tier.CRITICAL), 0, -1, withscores=True)
    later = RECEIVED + timedelta(hours=2)
    # the same version may differ in the last bits (scored in another batch): the stored values win
    (outcome,) = worklist.write([entry("S-1", priority=0.9000001, scored_at=later)])
    assert not outcome.changed
    assert (outcome.scored_at, outcome.priority, outcome.status) == (
        RECEIVED + timedelta(seconds=1),
        0.9,
        "waiting",
    )
    assert client.hgetall(keys.study("S-1")) == before
    assert client.zrange(index.unread(Tier.CRITICAL), 0, -1, withscores=True) == filed
    assert client.zrange(keys.worklist, 0, -1, withscores=True) == [("S-1", 0.9)]


def test_a_study_lost_between_the_two_writes_is_filed_on_replay(client: redis.Redis, keys: RedisKeys) -> None:
    worklist = writer(client, keys)
    worklist.write([entry("S-1", priority=0.6)])
    index = WorklistKeys(keys.prefix)
    client.delete(index.unread(Tier.URGENT))  # as if the worker died after the hash, before the tier index
    (outcome,) = worklist.write([entry("S-1", priority=0.6)])
    assert not outcome.changed and outcome.status == "waiting"
    assert client.zrange(index.unread(Tier.URGENT), 0, -1) == ["S-1"]


def test_a_later_version_never_rescores_or_puts_back_a_study(
    client: redis.Redis, redis_url: str, keys: RedisKeys
) -> None:
    worklist = writer(client, keys)
    worklist.write([entry("S-open", priority=0.3), entry("S-read", priority=0.3)])
    index = WorklistKeys(keys.prefix)
    with async_redis(redis_url) as aio:  # a radiologist's verdict took it off the worklist (the API's call)
        aio(complete, keys=index, study_id="S-read")
    before = {s: client.hgetall(keys.study(s)) for s in ("S-open", "S-read")}
    later = RECEIVED + timedelta(hours=1)
    rescored = [entry(s, version="2", priority=0.8, scored_at=later) for s in ("S-open", "S-read")]
    outcomes = worklist.write(rescored)
    assert [(o.changed, o.model_version, o.priority, o.status) for o in outcomes] == [
        (False, "1", 0.3, "waiting"),
        (False, "1", 0.3, "read"),
    ]
    assert outcomes[0].applied_to(rescored[0].prediction) == entry("S-open", priority=0.3).prediction
    assert {s: client.hgetall(keys.study(s)) for s in ("S-open", "S-read")} == before
    assert client.zrange(keys.worklist, 0, -1, withscores=True) == [("S-open", 0.3)]
    assert client.zrange(index.unread(Tier.ROUTINE), 0, -1) == ["S-open"]


def test_activation_maps_are_stored_with_the_prediction_once(redis_url: str, keys: RedisKeys) -> None:
    raw = redis.Redis.from_url(redis_url)  # maps are bytes: no decoding
    maps = np.random.default_rng(0).random((NUM_LABELS, 2, 3)).astype(np.float32)
    cams = encode_cams(maps)
    assert cams is not None
    first = replace(entry("S-1"), cams=cams)
    writer(raw, keys).write([first, entry("S-2")])
    index = WorklistKeys(keys.prefix)
    assert raw.get(index.cam("S-1")) == cams.data
    assert raw.hmget(keys.study("S-1"), ["cam_h", "cam_w"]) == [b"2", b"3"]
    decoded = np.frombuffer(raw.get(index.cam("S-1")) or b"", dtype=np.float16).reshape(NUM_LABELS, 2, 3)
    assert decoded.max() == 1.0 and decoded.min() == 0.0
    assert raw.get(index.cam("S-2")) is None and raw.hget(keys.study("S-2"), "cam_h") is None

    other = encode_cams(np.ones((NUM_LABELS, 2, 3), dtype=np.float32) + maps[::-1])
    assert other is not None and other.data != cams.data
    replay = WorklistEntry(first.study, entry("S-1", version="2").prediction, other)
    (outcome,) = writer(raw, keys).write([replay])
    assert not outcome.changed and raw.get(index.cam("S-1")) == cams.data  # the first maps stay
    raw.close()


def test_redis_down_is_stage_unavailable(keys: RedisKeys) -> None:
    dead = redis.Redis(host="127.0.0.1", port=free_ports(1)[0], socket_connect_timeout=0.5)
    with pytest.raises(StageUnavailable) as info:
        writer(dead, keys).write([entry("S-1")])
    assert info.value.stage == "redis"


def test_a_study_is_scored_once_per_role_with_its_arm_and_shadow(
    client: redis.Redis, keys: RedisKeys
) -> None:
    worklist = writer(client, keys)
    index = WorklistKeys(keys.prefix)
    plain = entry("S-1", version="1", priority=0.4)
    serving = plain.prediction.model_copy(update={"arm": "canary", "threshold": 0.25})
    shadow = entry("S-1", version="2", priority=0.8).prediction.model_copy(
        update={"role": "shadow", "arm": "canary"}
    )
    (first,) = worklist.write([replace(plain, prediction=serving, shadow=shadow)])
    assert first.changed and (first.arm, first.threshold, first.shadow) == ("canary", 0.25, shadow)
    stored = client.hgetall(keys.study("S-1"))
    assert stored["arm"] == "canary" and float(stored["threshold"]) == 0.25 and "shadow" not in stored
    assert PredictionEventV1.from_bytes(client.get(index.shadow("S-1")) or "") == shadow
    assert client.zscore(keys.worklist, "S-1") == 0.4  # the serving prediction orders, never the shadow

    # a replay under another rollout (now the champion's arm, another shadow): the first ones come back
    other = entry("S-1", version="2", priority=0.8)
    later_shadow = entry("S-1", version="1", priority=0.4).prediction.model_copy(update={"role": "shadow"})
    (replay,) = worklist.write([replace(other, shadow=later_shadow)])
    assert not replay.changed and (replay.arm, replay.shadow, replay.model_version) == ("canary", shadow, "1")
    assert replay.applied_to(other.prediction) == serving
    assert PredictionEventV1.from_bytes(client.get(index.shadow("S-1")) or "") == shadow

    # a study first scored without a shadow gets none later
    worklist.write([entry("S-2")])
    (again,) = worklist.write(
        [replace(entry("S-2", version="2"), shadow=later_shadow.model_copy(update={"study_id": "S-2"}))]
    )
    assert not again.changed and again.shadow is None and client.get(index.shadow("S-2")) is None
    assert again.arm == "champion"
    with pytest.raises(ValueError, match="serving"):
        worklist.write([replace(plain, prediction=shadow)])


def _stored_images(client: redis.Redis, keys: RedisKeys, study_id: str) -> dict[str, float | None]:
    stored = client.hgetall(WorklistKeys(keys.prefix).images(study_id))
    return {k: ImagePredictionV1.model_validate_json(v).priority for k, v in stored.items()}


def test_a_late_more_urgent_image_raises_the_waiting_study_and_keeps_the_first_reading(
    redis_url: str, keys: RedisKeys
) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    raw = redis.Redis.from_url(redis_url)
    index = WorklistKeys(keys.prefix)
    worklist = writer(client, keys)
    (first,) = worklist.write([study_entry("S-1", {"a-1": 0.3})])
    assert first.first and first.image_id == "a-1" and [i.image_id for i in first.images] == ["a-1"]
    worklist.mark_published(["S-1"])
    assert client.zrange(index.unread(Tier.ROUTINE), 0, -1) == ["S-1"]

    # The study again with a second PA: the first image read again gives another value (a new model version),
    # which never replaces its first reading; the new image is more urgent, so the study becomes its.
    late = study_entry("S-1", {"a-1": 0.6, "a-2": 0.95}, version="2")
    (amended,) = worklist.write([late])
    assert amended.changed and amended.amended and not amended.first and not amended.published
    assert (amended.priority, amended.tier, amended.image_id, amended.model_version) == (
        0.95,
        Tier.CRITICAL,
        "a-2",
        "2",
    )
    assert _stored_images(client, keys, "S-1") == {"a-1": 0.3, "a-2": 0.95}
    assert client.zscore(keys.worklist, "S-1") == 0.95
    assert client.zrange(index.unread(Tier.CRITICAL), 0, -1) == ["S-1"]
    assert client.zrange(index.unread(Tier.ROUTINE), 0, -1) == []
    assert client.zcard(keys.worklist) == 1  # one study, one entry
    assert raw.get(index.cam("S-1")) == late.image_cams["a-2"].data  # the study's maps are its image's
    assert raw.get(index.image_cam("S-1", "a-1")) == first_maps(study_entry("S-1", {"a-1": 0.3}))
    published = amended.applied_to(late.prediction)
    assert published.image_id == "a-2" and published.priority == 0.95
    assert [(i.image_id, i.priority) for i in published.images] == [("a-1", 0.3), ("a-2", 0.95)]

    # The same event again (a replay) adds nothing; Kafka has not acknowledged it yet, so it is republished.
    (replay,) = worklist.write([late])
    assert not replay.changed and not replay.published and replay.applied_to(late.prediction) == published


def first_maps(entry_: WorklistEntry) -> bytes:
    return entry_.image_cams[entry_.prediction.image_id or ""].data


def test_a_late_lateral_or_less_urgent_image_is_added_without_moving_the_study(
    client: redis.Redis, keys: RedisKeys
) -> None:
    worklist = writer(client, keys)
    worklist.write([study_entry("S-1", {"a-1": 0.7})])
    (lateral,) = worklist.write([study_entry("S-1", {"a-1": 0.7, "l-1": None}, views={"l-1": "LATERAL"})])
    assert lateral.amended and (lateral.priority, lateral.image_id) == (0.7, "a-1")
    assert _stored_images(client, keys, "S-1") == {"a-1": 0.7, "l-1": None}
    (calmer,) = worklist.write([study_entry("S-1", {"a-1": 0.7, "l-1": None, "a-2": 0.1})])
    assert calmer.amended and (calmer.priority, calmer.image_id) == (0.7, "a-1")
    assert client.zscore(keys.worklist, "S-1") == 0.7
    assert {i.image_id: i.view for i in calmer.images} == {"a-1": "PA", "l-1": "LATERAL", "a-2": "PA"}


def test_a_late_image_of_a_read_study_is_kept_but_never_puts_it_back(
    client: redis.Redis, keys: RedisKeys
) -> None:
    worklist = writer(client, keys)
    worklist.write([study_entry("S-1", {"a-1": 0.2})])
    index = WorklistKeys(keys.prefix)
    client.zadd(index.read, {"S-1": time.time()})  # read meanwhile (what `complete` leaves)
    client.zrem(keys.worklist, "S-1")
    (late,) = worklist.write([study_entry("S-1", {"a-1": 0.2, "a-2": 0.99})])
    assert late.amended and late.priority == 0.2 and late.status == "read"
    assert _stored_images(client, keys, "S-1") == {"a-1": 0.2, "a-2": 0.99}
    assert client.zscore(keys.worklist, "S-1") is None
