"""Recording a verdict: Kafka first (the source of truth), then the worklist projection, in one script.

Each submission has an Idempotency-Key (the client's, else derived from it: ``idempotency``). Order of work,
so that an acknowledged verdict is never lost, a failed one changes nothing, and a retry is safe:

1. a key already recorded is answered from its record (``replayed``), without a new event; the same key
   with a different reading is refused (422, as the draft says);
2. hold the study for the author (``reserve``: 409 if another radiologist holds its lease);
3. keep the event as pending under its key, publish it and wait for Kafka's acknowledgement (503 and the
   hold is undone otherwise), then note in the pending record where Kafka put it (partition, offset);
4. one script records the verdict and its key and completes the study (``cxr_triage.worklist.verdicts``).

A retry that finds the pending event of its key (Kafka acknowledged but step 4 failed: Redis down, the API
killed; or the acknowledgement never came) must neither publish a verdict Kafka already has nor lose one
Kafka lacks, and still complete step 4 (``_in_kafka``):

- the acknowledgement was noted: Kafka has it, nothing is published;
- it was not (that write failed too, or no ack came): ``verdict_lookup`` reads cxr.verdicts.v1 for the
  verdict id since shortly before the event was decided; found, nothing is published; not found, the very
  same event (same id, same times) is; Kafka not readable → 503 and the hold is undone: never a blind publish.

Chosen over publishing again and leaving the duplicate to the consumers' dedupe by verdict id (the issue: a
retry never duplicates the event); the idempotent producer cannot help, its dedupe spans one producer session,
not a later request or a restarted API. Kafka is asked only when no delivery was noted, so the common retry
(Redis failed after the ack) reads nothing. Without a key, the same reading as the radiologist's latest
verdict is a replay; a different one is an amendment that names the verdict it replaces.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from cxr_triage import topics
from cxr_triage.events import VerdictEventV1
from cxr_triage.worklist import verdicts as stored
from cxr_triage.worklist.claims import release, reserve
from cxr_triage.worklist.keys import WorklistKeys
from priority_queue_api import idempotency
from priority_queue_api.errors import Conflict, EventsUnavailable, StudyNotFound, Unprocessable
from priority_queue_api.events_out import DeliveryFailed, EventSink
from priority_queue_api.models import VerdictCreate, VerdictPublic
from priority_queue_api.verdict_lookup import LookupFailed, VerdictLookup

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
        idempotency_key=event.idempotency_key,
        replayed=replayed,
    )


def _check_same(event: VerdictEventV1, body: VerdictCreate, *, client_key: bool) -> None:
    # A derived key already is a hash of the reading; only a client's key can be reused for another one.
    if client_key and idempotency.fingerprint_of_event(event) != idempotency.fingerprint_of_body(body):
        raise Unprocessable(
            f"this {idempotency.HEADER} was used for a different verdict on this study; "
            "send a new key for a new verdict"
        )


def _new_event(
    *,
    study: dict[str, str],
    study_id: str,
    radiologist: str,
    body: VerdictCreate,
    key: str,
    previous: VerdictEventV1 | None,
    claimed_at: str | None,
) -> VerdictEventV1:
    return VerdictEventV1(
        verdict_id=idempotency.verdict_id(study_id, radiologist, key),
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
        idempotency_key=key,
    )


async def _in_kafka(pending: stored.Pending, lookup: VerdictLookup) -> bool:
    """Whether Kafka already holds the pending verdict (``LookupFailed``: it cannot be told now)."""
    if pending.delivered is not None:  # its delivery report: acks=all made it durable there
        return True
    return await lookup.published(pending.event)


async def record_verdict(
    *,
    redis: Redis,
    keys: WorklistKeys,
    sink: EventSink,
    lookup: VerdictLookup,
    radiologist: str,
    study_id: str,
    body: VerdictCreate,
    lease_s: int,
    idempotency_key: str | None = None,
) -> VerdictPublic:
    study = cast(dict[str, str], await redis.hgetall(keys.study(study_id)))
    if not study:
        raise StudyNotFound(study_id)
    lock = keys.verdict_lock(study_id, radiologist)
    # Held past the longest a submission can take (a lookup, then a publish): two submissions of one key at
    # once could both find the verdict missing from Kafka and both publish it.
    lock_s = lookup.timeout_s + sink.timeout_s + 1 + 10
    if not await redis.set(lock, "1", nx=True, px=int(lock_s * 1000)):
        raise Conflict("a verdict of yours on this study is being recorded right now; retry in a moment")
    try:
        previous_raw = await redis.hget(keys.verdicts(study_id), radiologist)
        previous = VerdictEventV1.from_bytes(previous_raw) if previous_raw else None
        client_key = idempotency_key is not None
        key = idempotency_key or idempotency.derived_key(
            study_id, radiologist, body, previous.verdict_id if previous else None
        )
        done = await stored.recorded(redis, keys=keys, study_id=study_id, radiologist=radiologist, key=key)
        if done is not None:
            _check_same(done, body, client_key=client_key)
            return _public(done, replayed=True)
        pending = await stored.pending_verdict(
            redis, keys=keys, study_id=study_id, radiologist=radiologist, key=key
        )
        event = pending.event if pending is not None else None
        if event is not None:
            _check_same(event, body, client_key=client_key)
        elif previous is not None and _same_reading(previous, body):
            return _public(previous, replayed=True)

        held = await reserve(redis, keys=keys, study_id=study_id, radiologist=radiologist, lease_s=lease_s)
        # A pending verdict may already be in Kafka, the record: it is completed whoever holds the study now.
        if held.status == "conflict" and event is None:
            raise Conflict(
                f"study {study_id!r} is claimed by {held.holder}; only they can record a verdict now"
            )
        publish = True
        if pending is not None:
            try:
                publish = not await _in_kafka(pending, lookup)
            except LookupFailed as exc:
                log.error("could not tell whether Kafka has the pending verdict", extra={"error": str(exc)})
                if held.status == "reserved":
                    await release(redis, keys=keys, study_id=study_id, radiologist=radiologist)
                raise EventsUnavailable(
                    "the verdict could not be saved: Kafka could not be asked whether it already has this "
                    "submission, so nothing was recorded; retry"
                ) from exc
        if event is None:
            claimed_at = cast(str | None, await redis.hget(keys.lease(study_id), "claimed_at"))
            event = _new_event(
                study=study,
                study_id=study_id,
                radiologist=radiologist,
                body=body,
                key=key,
                previous=previous,
                claimed_at=claimed_at,
            )
            await stored.stash_pending(redis, keys=keys, event=event)
        if publish:
            await _publish(redis, keys=keys, sink=sink, event=event, held=held.status)
        else:
            log.info("pending verdict already in Kafka: recorded without publishing it again")

        holder = await stored.record_verdict(redis, keys=keys, event=event, now=time.time())
        if holder and holder != radiologist:
            log.warning("verdict recorded while another radiologist held the lease")
        log.info("verdict recorded", extra={"kind": event.kind, "radiologist": radiologist})
        return _public(event, replayed=False)
    finally:
        await redis.delete(lock)


async def _publish(
    redis: Redis, *, keys: WorklistKeys, sink: EventSink, event: VerdictEventV1, held: str
) -> None:
    try:
        where = await sink.deliver(topics.VERDICTS, event.key, event)
    except DeliveryFailed as exc:
        log.error("verdict not acknowledged by Kafka", extra={"error": str(exc)})
        if held == "reserved":  # we took the study only for this verdict: give it back
            await release(redis, keys=keys, study_id=event.study_id, radiologist=event.radiologist)
        # The pending event stays: the retry asks Kafka whether it got it after all before sending it again.
        raise EventsUnavailable(
            "the verdict could not be saved: Kafka did not acknowledge it, so nothing was recorded; retry"
        ) from exc
    try:
        await stored.mark_delivered(
            redis, keys=keys, event=event, partition=where.partition, offset=where.offset
        )
    except RedisError as exc:
        # The recording that follows most likely fails too (503); its retry then asks Kafka instead.
        log.warning("delivery of a pending verdict not noted", extra={"error": str(exc)})
