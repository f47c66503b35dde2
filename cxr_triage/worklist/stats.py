"""How the unread worklist stands, tier by tier: how many studies wait and how long the oldest has waited."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import redis.asyncio

from cxr_triage.sla import TIERS, SlaPolicy, Tier
from cxr_triage.worklist.keys import WorklistKeys

# Candidates for a tier's oldest study are read in chunks of this many hashes.
_CHUNK = 500


@dataclass(frozen=True)
class TierStats:
    tier: Tier
    unread: int
    oldest_wait_s: float  # 0 when the tier is empty


async def tier_stats(
    client: redis.asyncio.Redis, *, keys: WorklistKeys, policy: SlaPolicy, now: float
) -> list[TierStats]:
    """One entry per tier. ``client`` must decode responses."""
    stats = []
    for tier in TIERS:
        unread = int(await client.zcard(keys.unread(tier)))
        oldest = await _oldest_received(client, keys=keys, policy=policy, tier=tier) if unread else None
        stats.append(TierStats(tier, unread, max(now - oldest, 0.0) if oldest is not None else 0.0))
    return stats


async def _oldest_received(
    client: redis.asyncio.Redis, *, keys: WorklistKeys, policy: SlaPolicy, tier: Tier
) -> float | None:
    # An index score is priority - received / aging with priority in [0, 1] (SlaPolicy.index_score), so the
    # oldest study's score is at least the top score minus 1: only that band can hold it, not the whole tier.
    key = keys.unread(tier)
    top = await client.zrevrange(key, 0, 0, withscores=True)
    if not top:
        return None
    band = [str(member) for member in await client.zrangebyscore(key, float(top[0][1]) - 1.0, "+inf")]
    oldest: float | None = None
    for start in range(0, len(band), _CHUNK):
        async with client.pipeline(transaction=False) as pipe:
            for study_id in band[start : start + _CHUNK]:
                pipe.hget(keys.study(study_id), "received_at")
            for text in await pipe.execute():
                if text:
                    received = datetime.fromisoformat(text).timestamp()
                    oldest = received if oldest is None else min(oldest, received)
    return oldest
