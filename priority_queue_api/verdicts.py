"""Recording a verdict: Kafka first (the source of truth), then the worklist projection.

Order of work, so that an acknowledged verdict is never lost and a failed one changes nothing:
1. hold the study for the author (``reserve``: 409 if another radiologist holds its lease);
2. publish ``VerdictEventV1`` and wait for Kafka's acknowledgement (503 and the hold is undone otherwise);
3. mark the study read and remember the verdict for idempotency.
The same verdict sent again by the same radiologist is answered from step 3's record without a new event;
a different one is an amendment that names the verdict it replaces.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime
from typing import cast

from redis.asyncio import Redis

from cxr_triage import topics
from cxr_triage.events import VerdictEventV1
from cxr_triage.worklist.claims import complete, release, reserve
from cxr_triage.worklist.keys import WorklistKeys
from priority_queue_api.errors import Conflict, EventsUnavailable, StudyNotFound
from priority_queue_api.events_out import DeliveryFailed, EventSink
from priority_queue_api.models import VerdictCreate, VerdictPublic

log = logging.getLogger(__name__)


def _same_reading(previous: VerdictEventV1, body: VerdictCreate) -> bool:
    return (
        previous.labels == body.labels
        and list(previous.uncertain) == body.uncertain
        and (previous.note or None) == (body.note or None)
    )


def _public(event: VerdictEventV1, *, replayed: bool) -> VerdictPublic:
    return VerdictPublic(
        verdict_id=event.verdict_id,
        study_id=event.study_id,
        radiologist=event.radiologist,
        kind=event.kind,
        amends=event.amends,
        labels=dict(event.labels),
        uncertain=list(event.uncertain),
        note=event.note,
        model_version=event.model_version,
        decided_at=event.decided_at,
        replayed=replayed,
    )


async def record_verdict(
    *,
    redis: Redis,
    keys: WorklistKeys,
    sink: EventSink,
    radiologist: str,
    study_id: str,
    body: VerdictCreate,
    lease_s: int,
) -> VerdictPublic:
    study = cast(dict[str, str], await redis.hgetall(keys.study(study_id)))
    if not study:
        raise StudyNotFound(study_id)
    lock = keys.verdict_lock(study_id, radiologist)
    if not await redis.set(lock, "1", nx=True, px=int((sink.timeout_s + 10) * 1000)):
        raise Conflict("a verdict of yours on this study is being recorded right now; retry in a moment")
    try:
        previous_raw = await redis.hget(keys.verdicts(study_id), radiologist)
        previous = VerdictEventV1.from_bytes(previous_raw) if previous_raw else None
        if previous is not None and _same_reading(previous, body):
            return _public(previous, replayed=True)

        held = await reserve(redis, keys=keys, study_id=study_id, radiologist=radiologist, lease_s=lease_s)
        if held.status == "conflict":
            raise Conflict(
                f"study {study_id!r} is claimed by {held.holder}; only they can record a verdict now"
            )
        claimed_at = await redis.hget(keys.lease(study_id), "claimed_at")
        event = VerdictEventV1(
            verdict_id=uuid.uuid4().hex,
            kind="amendment" if previous is not None else "verdict",
            amends=previous.verdict_id if previous is not None else None,
            study_id=study_id,
            radiologist=radiologist,
            labels=body.labels,
            uncertain=tuple(body.uncertain),
            note=body.note or None,
            agreed_with_model=body.agreed_with_model,
            model_name=study["model_name"],
            model_version=body.model_version_seen or study["model_version"],
            received_at=datetime.fromisoformat(study["received_at"]),
            scored_at=datetime.fromisoformat(study["scored_at"]),
            claimed_at=datetime.fromtimestamp(float(claimed_at), UTC) if claimed_at else None,
            decided_at=datetime.now(UTC),
        )
        try:
            await sink.deliver(topics.VERDICTS, study_id, event)
        except DeliveryFailed as exc:
            log.error("verdict not acknowledged by Kafka", extra={"error": str(exc)})
            if held.status == "reserved":  # we took the study only for this verdict: give it back
                await release(redis, keys=keys, study_id=study_id, radiologist=radiologist)
            raise EventsUnavailable(
                "the verdict could not be saved: Kafka did not acknowledge it, so nothing was recorded; retry"
            ) from exc

        await redis.hset(keys.verdicts(study_id), radiologist, event.model_dump_json())
        holder = await complete(redis, keys=keys, study_id=study_id, now=time.time())
        if holder and holder != radiologist:
            log.warning("verdict recorded while another radiologist held the lease")
        log.info("verdict recorded", extra={"kind": event.kind, "radiologist": radiologist})
        return _public(event, replayed=False)
    finally:
        await redis.delete(lock)
