"""The worklist index's Lua scripts against a real redis-server: order, leases, atomicity, idempotence.

Each script is called through the wrapper its service runs: the worker's sync ``index_scored_study``, the
API's asyncio ``claims`` and ``page`` (through ``AsyncRedis``).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis

from cxr_triage.sla import SlaPolicy, Tier
from cxr_triage.worklist.claims import claim_next, complete, release, reserve
from cxr_triage.worklist.index import index_scored_study
from cxr_triage.worklist.keys import WorklistKeys
from cxr_triage.worklist.page import read_page
from tests.integration.async_redis import AsyncRedis, async_redis
from tests.integration.conftest import RedisServer

POLICY = SlaPolicy()
# Each tier aging over its own allowance (no horizon): where the tiers' different clocks are the point.
TIERED = SlaPolicy(aging_horizon_min=None)
T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
NOW = T0.timestamp()


@pytest.fixture()
def r(redis_server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url, decode_responses=True)


@pytest.fixture()
def aio(redis_server: RedisServer) -> Iterator[AsyncRedis]:
    with async_redis(redis_server.url) as caller:
        yield caller


def _index(
    r: redis.Redis,
    keys: WorklistKeys,
    study_id: str,
    priority: float,
    age: timedelta,
    tier: Tier | None = None,
    policy: SlaPolicy = POLICY,
) -> str | None:
    """File a study as the worker does; its tier is the fallback thresholds' unless the test picks one."""
    return index_scored_study(
        r,
        keys=keys,
        policy=policy,
        study_id=study_id,
        priority=priority,
        tier=tier or POLICY.tier_for(priority),
        received_at=T0 - age,
        now=NOW,
    )


def _effective(priority: float, age_s: float) -> float:
    tier = POLICY.tier_for(priority)
    return POLICY.effective_priority(priority=priority, tier=tier, waited_s=age_s)


def test_claims_follow_effective_priority_across_tiers(r: redis.Redis, aio: AsyncRedis) -> None:
    keys = WorklistKeys("order")
    _index(r, keys, "fresh-critical", 0.9, timedelta(0), policy=TIERED)  # 0.9
    _index(r, keys, "old-routine", 0.3, timedelta(hours=23, minutes=54), policy=TIERED)  # 0.3 + 0.996
    _index(r, keys, "urgent-1h", 0.6, timedelta(hours=1), policy=TIERED)  # 0.6 + 0.5
    _index(r, keys, "critical-20min", 0.85, timedelta(minutes=20), policy=TIERED)  # 0.85 + 0.667

    order = []
    while (
        claim := aio(claim_next, keys=keys, policy=TIERED, radiologist="ana", lease_s=600, now=NOW)
    ) is not None:
        order.append(claim.study_id)
        if claim.study_id == "critical-20min":
            assert claim.tier is Tier.CRITICAL
            assert claim.effective_priority == pytest.approx(0.85 + 20 / 30)
            assert claim.expires_at == pytest.approx(NOW + 600)
    assert order == ["critical-20min", "old-routine", "urgent-1h", "fresh-critical"]


def test_with_the_horizon_every_tier_ages_alike(r: redis.Redis, aio: AsyncRedis) -> None:
    keys = WorklistKeys("horizon")
    _index(r, keys, "routine-22min", 0.1, timedelta(minutes=22))  # 0.1 + 22/25 = 0.98
    _index(r, keys, "critical-fresh", 0.95, timedelta(0))  # 0.95
    _index(r, keys, "urgent-8min", 0.6, timedelta(minutes=8))  # 0.6 + 8/25 = 0.92
    _index(r, keys, "routine-5min", 0.4, timedelta(minutes=5))  # 0.4 + 5/25 = 0.6
    order = []
    while (
        claim := aio(claim_next, keys=keys, policy=POLICY, radiologist="ana", lease_s=600, now=NOW)
    ) is not None:
        order.append((claim.study_id, round(claim.effective_priority, 3)))
    assert [study for study, _ in order] == ["routine-22min", "critical-fresh", "urgent-8min", "routine-5min"]
    assert [e for _, e in order] == [0.98, 0.95, 0.92, 0.6]


def test_claim_order_matches_brute_force_on_random_studies(r: redis.Redis, aio: AsyncRedis) -> None:
    keys = WorklistKeys("random")
    rng = random.Random(7)
    studies = {f"s{i}": (rng.random(), rng.uniform(0, 30 * 3600)) for i in range(200)}
    for study_id, (priority, age_s) in studies.items():
        _index(r, keys, study_id, priority, timedelta(seconds=age_s))
    expected = sorted(studies, key=lambda s: _effective(*studies[s]), reverse=True)
    claimed = [
        claim.study_id
        for _ in studies
        if (claim := aio(claim_next, keys=keys, policy=POLICY, radiologist="ana", lease_s=60, now=NOW))
    ]
    assert claimed == expected
    assert aio(claim_next, keys=keys, policy=POLICY, radiologist="ana", lease_s=60, now=NOW) is None


def test_expired_lease_returns_the_study_and_release_checks_the_holder(
    r: redis.Redis, aio: AsyncRedis
) -> None:
    keys = WorklistKeys("lease")
    _index(r, keys, "a", 0.9, timedelta(minutes=5))
    _index(r, keys, "b", 0.2, timedelta(0))

    first = aio(claim_next, keys=keys, policy=POLICY, radiologist="ana", lease_s=30, now=NOW)
    assert first is not None and first.study_id == "a"
    second = aio(claim_next, keys=keys, policy=POLICY, radiologist="ben", lease_s=30, now=NOW + 1)
    assert second is not None and second.study_id == "b"  # never the same study twice
    assert aio(claim_next, keys=keys, policy=POLICY, radiologist="cy", lease_s=30, now=NOW + 2) is None

    # After 30 s both leases have expired: the best study is back and goes to the next caller.
    again = aio(claim_next, keys=keys, policy=POLICY, radiologist="cy", lease_s=30, now=NOW + 31)
    assert again is not None and again.study_id == "a"
    assert r.hget(keys.lease("a"), "radiologist") == "cy"

    assert aio(release, keys=keys, study_id="a", radiologist="ana", now=NOW + 32).status == "conflict"
    assert aio(release, keys=keys, study_id="a", radiologist="cy", now=NOW + 32).status == "released"
    assert aio(release, keys=keys, study_id="a", radiologist="cy", now=NOW + 32).status == "not_claimed"
    taken = aio(claim_next, keys=keys, policy=POLICY, radiologist="ben", lease_s=30, now=NOW + 33)
    assert taken is not None and taken.study_id == "a"
    forced = aio(release, keys=keys, study_id="a", radiologist="eng", force=True, now=NOW + 34)
    assert forced.status == "released" and forced.holder == "ben"


def test_index_is_idempotent_follows_rescoring_and_never_revives_a_read_study(
    r: redis.Redis, aio: AsyncRedis
) -> None:
    keys = WorklistKeys("idem")
    for _ in range(3):
        assert _index(r, keys, "s", 0.9, timedelta(minutes=1)) == "waiting"
    assert r.zcard(keys.unread(Tier.CRITICAL)) == 1 and r.zcard(keys.worklist) == 1

    assert _index(r, keys, "s", 0.3, timedelta(minutes=1)) == "waiting"  # a new model's lower score
    assert r.zcard(keys.unread(Tier.CRITICAL)) == 0 and r.zcard(keys.unread(Tier.ROUTINE)) == 1
    assert r.zscore(keys.worklist, "s") == pytest.approx(0.3)

    assert aio(claim_next, keys=keys, policy=POLICY, radiologist="ana", lease_s=60, now=NOW) is not None
    assert _index(r, keys, "s", 0.95, timedelta(minutes=1)) == "claimed"  # stays leased...
    assert r.zcard(keys.unread(Tier.ROUTINE)) == 0 and r.zcard(keys.unread(Tier.CRITICAL)) == 0
    assert aio(release, keys=keys, study_id="s", radiologist="ana", now=NOW).status == "released"
    assert r.zcard(keys.unread(Tier.CRITICAL)) == 1  # ...and goes back where its new score belongs

    assert aio(complete, keys=keys, study_id="s", now=NOW) == ""
    assert _index(r, keys, "s", 0.95, timedelta(minutes=1)) == "read"
    for key in (keys.unread(Tier.CRITICAL), keys.claims, keys.worklist):
        assert r.zcard(key) == 0
    assert r.zscore(keys.read, "s") == pytest.approx(NOW)


def test_index_queues_in_a_worker_pipeline(r: redis.Redis) -> None:
    keys = WorklistKeys("pipe")
    with r.pipeline(transaction=True) as pipe:
        pipe.hset(keys.study("s"), mapping={"study_id": "s", "priority": "0.5"})
        assert (
            index_scored_study(
                pipe, keys=keys, policy=POLICY, study_id="s", priority=0.5, tier=Tier.URGENT, received_at=T0
            )
            is None
        )
        results = pipe.execute()
    assert results[-1] == "waiting"
    assert r.zcard(keys.unread(Tier.URGENT)) == 1


def test_reserve_and_complete(r: redis.Redis, aio: AsyncRedis) -> None:
    keys = WorklistKeys("reserve")
    _index(r, keys, "s", 0.5, timedelta(0))
    assert aio(reserve, keys=keys, study_id="s", radiologist="ana", lease_s=60, now=NOW).status == "reserved"
    assert aio(reserve, keys=keys, study_id="s", radiologist="ana", lease_s=60, now=NOW).status == "held"
    outcome = aio(reserve, keys=keys, study_id="s", radiologist="ben", lease_s=60, now=NOW)
    assert (outcome.status, outcome.holder) == ("conflict", "ana")
    assert (
        aio(reserve, keys=keys, study_id="ghost", radiologist="ben", lease_s=60, now=NOW).status
        == "unindexed"
    )
    assert aio(complete, keys=keys, study_id="s", now=NOW) == "ana"
    assert aio(reserve, keys=keys, study_id="s", radiologist="ben", lease_s=60, now=NOW).status == "read"
    assert aio(claim_next, keys=keys, policy=POLICY, radiologist="ben", lease_s=60, now=NOW) is None


def test_page_orders_filters_counts_and_paginates(r: redis.Redis, aio: AsyncRedis) -> None:
    keys = WorklistKeys("page")
    rng = random.Random(3)
    studies = {f"s{i:03d}": (rng.random(), rng.uniform(0, 4 * 3600)) for i in range(120)}
    for study_id, (priority, age_s) in studies.items():
        r.hset(keys.study(study_id), mapping={"study_id": study_id, "priority": str(priority)})
        _index(r, keys, study_id, priority, timedelta(seconds=age_s))
    leased = [
        c.study_id
        for _ in range(5)
        if (c := aio(claim_next, keys=keys, policy=POLICY, radiologist="ana", lease_s=600, now=NOW))
    ]
    by_effective = sorted(studies, key=lambda s: _effective(*studies[s]), reverse=True)

    everything = aio(read_page, keys=keys, policy=POLICY, limit=500, now=NOW)
    assert everything.total == 120
    assert [row.study_id for row in everything.rows] == by_effective
    assert {row.study_id for row in everything.rows if row.status == "claimed"} == set(leased)
    assert all(row.claimed_by == "ana" for row in everything.rows if row.status == "claimed")
    assert everything.rows[0].study == {
        "study_id": by_effective[0],
        "priority": str(studies[by_effective[0]][0]),
    }

    pages = [aio(read_page, keys=keys, policy=POLICY, offset=o, limit=25, now=NOW) for o in range(0, 125, 25)]
    assert [row.study_id for page in pages for row in page.rows] == by_effective

    waiting = aio(read_page, keys=keys, policy=POLICY, limit=500, leased=False, now=NOW)
    assert waiting.total == 115 and not {row.study_id for row in waiting.rows} & set(leased)
    claimed = aio(read_page, keys=keys, policy=POLICY, limit=500, waiting=False, now=NOW)
    assert [row.study_id for row in claimed.rows] == [s for s in by_effective if s in leased]

    for min_priority in (0.3, 0.5, 0.65, 0.9):
        expected = [s for s in by_effective if studies[s][0] >= min_priority]
        page = aio(read_page, keys=keys, policy=POLICY, limit=10, min_priority=min_priority, now=NOW)
        assert page.total == len(expected)
        assert [row.study_id for row in page.rows] == expected[:10]

    urgent = aio(read_page, keys=keys, policy=POLICY, limit=500, tiers=(Tier.URGENT,), now=NOW)
    assert [row.study_id for row in urgent.rows] == [
        s for s in by_effective if POLICY.tier_for(studies[s][0]) is Tier.URGENT
    ]
    assert all(row.tier is Tier.URGENT for row in urgent.rows)


def test_the_tier_is_the_callers_and_min_priority_filters_every_tier(r: redis.Redis, aio: AsyncRedis) -> None:
    keys = WorklistKeys("tiers")
    # Models disagree on thresholds: a strict one filed a 0.3 as critical, a lax one a 0.9 as routine.
    for study_id, priority, tier in (("strict", 0.3, Tier.CRITICAL), ("lax", 0.9, Tier.ROUTINE)):
        r.hset(keys.study(study_id), mapping={"study_id": study_id, "priority": str(priority)})
        _index(r, keys, study_id, priority, timedelta(minutes=20), tier=tier, policy=TIERED)
    assert r.zrange(keys.unread(Tier.CRITICAL), 0, -1) == ["strict"]
    assert r.zrange(keys.unread(Tier.ROUTINE), 0, -1) == ["lax"]

    page = aio(read_page, keys=keys, policy=TIERED, limit=10, now=NOW)
    assert [(row.study_id, row.tier) for row in page.rows] == [
        ("strict", Tier.CRITICAL),
        ("lax", Tier.ROUTINE),
    ]
    strict_effective = TIERED.effective_priority(priority=0.3, tier=Tier.CRITICAL, waited_s=1200)
    assert page.rows[0].effective_priority == pytest.approx(strict_effective)
    for min_priority, expected in ((0.5, ["lax"]), (0.95, []), (0.3, ["strict", "lax"])):
        filtered = aio(read_page, keys=keys, policy=TIERED, limit=10, min_priority=min_priority, now=NOW)
        assert (filtered.total, [row.study_id for row in filtered.rows]) == (len(expected), expected)

    claim = aio(claim_next, keys=keys, policy=TIERED, radiologist="ana", lease_s=60, now=NOW)
    assert claim is not None and (claim.study_id, claim.tier) == ("strict", Tier.CRITICAL)
    leased = aio(read_page, keys=keys, policy=TIERED, limit=10, min_priority=0.5, waiting=False, now=NOW)
    assert leased.total == 0


def test_scripts_are_loaded_again_after_a_script_flush(r: redis.Redis, aio: AsyncRedis) -> None:
    keys = WorklistKeys("flush")
    _index(r, keys, "a", 0.9, timedelta(0))
    assert aio(read_page, keys=keys, policy=POLICY, now=NOW).total == 1
    r.script_flush()  # as after a Redis restart: the server knows no script
    _index(r, keys, "b", 0.2, timedelta(0))
    with r.pipeline(transaction=False) as pipe:
        index_scored_study(
            pipe, keys=keys, policy=POLICY, study_id="c", priority=0.1, tier=Tier.ROUTINE, received_at=T0
        )
        assert pipe.execute() == ["waiting"]
    r.script_flush()
    claim = aio(claim_next, keys=keys, policy=POLICY, radiologist="ana", lease_s=60, now=NOW)
    assert claim is not None and claim.study_id == "a"
    assert aio(read_page, keys=keys, policy=POLICY, now=NOW).total == 3


def test_eight_clients_claiming_at_once_get_distinct_studies(redis_server: RedisServer) -> None:
    keys = WorklistKeys("race")
    setup = redis.Redis.from_url(redis_server.url, decode_responses=True)
    for i in range(100):
        _index(setup, keys, f"s{i}", (i % 10) / 10, timedelta(seconds=i))
    claims: list[list[str]] = [[] for _ in range(8)]
    barrier = threading.Barrier(8)

    def radiologist(n: int) -> None:
        with async_redis(redis_server.url) as own:  # each thread: its own event loop and connection
            barrier.wait()
            while (
                c := own(claim_next, keys=keys, policy=POLICY, radiologist=f"r{n}", lease_s=600)
            ) is not None:
                claims[n].append(c.study_id)

    threads = [threading.Thread(target=radiologist, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    every = [study for mine in claims for study in mine]
    assert len(every) == 100 and set(every) == {f"s{i}" for i in range(100)}
    assert sum(1 for mine in claims if mine) > 1, "the clients did not actually run concurrently"
    assert setup.zcard(keys.claims) == 100
