"""Recording a verdict that Kafka holds: ``lua/verdict.lua`` (the API's side asyncio, the rebuild's side sync).

One script writes the radiologist's latest verdict, the record of its Idempotency-Key and the study's
completion (off its tier, its lease and the worklist; read), so that no reader ever sees a verdict recorded
on a study still unread, or the reverse. Pending verdicts (sent to Kafka, not yet recorded) are the API's:
``stash_pending`` / ``pending`` keep the exact event a retry must complete, and ``mark_delivered`` where
Kafka put it once acknowledged (``pending_verdict``), so that a retry knows not to send it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import redis
import redis.asyncio

from cxr_triage.events import VerdictEventV1
from cxr_triage.worklist.keys import WorklistKeys
from cxr_triage.worklist.scripts import async_script, now_arg, sync_script, text, tier_names

# A pending verdict only matters to a client retrying soon (the draft lets keys expire). A retry later than
# this is a new submission with the same verdict id, which every consumer dedupes.
PENDING_TTL_S: Final = 24 * 3600
# The pending hash's field of a key's delivery report. An Idempotency-Key never holds a space, so no client
# key can be mistaken for it; lua/verdict.lua deletes it with the key's pending event.
_DELIVERED_SUFFIX: Final = " kafka"


@dataclass(frozen=True)
class Pending:
    """A verdict kept before it was sent, and where Kafka put it if its acknowledgement was noted."""

    event: VerdictEventV1
    delivered: tuple[int, int] | None  # (partition, offset) on cxr.verdicts.v1


def _arguments(keys: WorklistKeys, event: VerdictEventV1, now: float | None) -> list[str]:
    if not event.idempotency_key:
        raise ValueError("a verdict is recorded under its idempotency key, and this one has none")
    return [
        keys.prefix,
        now_arg(now),
        event.study_id,
        event.radiologist,
        event.idempotency_key,
        event.model_dump_json(),
        repr(event.decided_at.timestamp()),
        *tier_names(),
    ]


async def record_verdict(
    client: redis.asyncio.Redis, *, keys: WorklistKeys, event: VerdictEventV1, now: float | None = None
) -> str:
    """Record ``event`` and mark its study read; returns the lease holder the study had, or ""."""
    args = _arguments(keys, event, now)
    return text(await async_script(client, "verdict")(args=args, client=client))


def record_verdict_sync(
    client: redis.Redis, *, keys: WorklistKeys, event: VerdictEventV1, now: float | None = None
) -> str | None:
    """``record_verdict`` for a sync client; with a pipeline the script is queued and None is returned."""
    reply = sync_script(client, "verdict")(args=_arguments(keys, event, now), client=client)
    if isinstance(client, redis.client.Pipeline):
        return None
    return text(reply)


async def recorded(
    client: redis.asyncio.Redis, *, keys: WorklistKeys, study_id: str, radiologist: str, key: str
) -> VerdictEventV1 | None:
    """The verdict recorded under Idempotency-Key ``key``, if any."""
    raw = await client.hget(keys.verdict_keys(study_id, radiologist), key)
    return VerdictEventV1.from_bytes(raw) if raw else None


async def pending(
    client: redis.asyncio.Redis, *, keys: WorklistKeys, study_id: str, radiologist: str, key: str
) -> VerdictEventV1 | None:
    """The verdict sent to Kafka under ``key`` but not recorded yet (its ack or the recording failed)."""
    raw = await client.hget(keys.verdict_pending(study_id, radiologist), key)
    return VerdictEventV1.from_bytes(raw) if raw else None


async def pending_verdict(
    client: redis.asyncio.Redis, *, keys: WorklistKeys, study_id: str, radiologist: str, key: str
) -> Pending | None:
    """``pending`` with the delivery noted by ``mark_delivered``, if any (one round trip)."""
    raw, where = await client.hmget(
        keys.verdict_pending(study_id, radiologist), [key, key + _DELIVERED_SUFFIX]
    )
    if not raw:
        return None
    delivered = None
    if where:
        partition, _, offset = text(where).partition(":")
        delivered = (int(partition), int(offset))
    return Pending(VerdictEventV1.from_bytes(raw), delivered)


async def mark_delivered(
    client: redis.asyncio.Redis, *, keys: WorklistKeys, event: VerdictEventV1, partition: int, offset: int
) -> None:
    """Note that Kafka acknowledged the pending ``event`` at (``partition``, ``offset``)."""
    if not event.idempotency_key:
        raise ValueError("a pending verdict is kept under its idempotency key, and this one has none")
    name = keys.verdict_pending(event.study_id, event.radiologist)
    async with client.pipeline(transaction=True) as pipe:
        pipe.hset(name, event.idempotency_key + _DELIVERED_SUFFIX, f"{partition}:{offset}")
        pipe.expire(name, PENDING_TTL_S)
        await pipe.execute()


async def stash_pending(client: redis.asyncio.Redis, *, keys: WorklistKeys, event: VerdictEventV1) -> None:
    """Keep ``event`` before it is sent, so that a retry sends exactly it (same id, same times)."""
    if not event.idempotency_key:
        raise ValueError("a pending verdict is kept under its idempotency key, and this one has none")
    name = keys.verdict_pending(event.study_id, event.radiologist)
    async with client.pipeline(transaction=True) as pipe:
        pipe.hset(name, event.idempotency_key, event.model_dump_json())
        pipe.expire(name, PENDING_TTL_S)
        await pipe.execute()


async def drop_pending(
    client: redis.asyncio.Redis, *, keys: WorklistKeys, study_id: str, radiologist: str, key: str
) -> None:
    await client.hdel(keys.verdict_pending(study_id, radiologist), key, key + _DELIVERED_SUFFIX)
