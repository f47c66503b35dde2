"""``cxr-triage worklist rebuild``: the Redis worklist restored from Kafka alone (Kafka is the record).

Reads ``cxr.studies.v1``, ``cxr.predictions.v1`` and ``cxr.verdicts.v1`` from their first offsets to the end
offsets taken when it starts, with a throwaway consumer that joins no group and commits nothing (the
workers' committed offsets are untouched), then writes the projection with the services' own scripts
(``cxr_triage.worklist.rebuild``). Nothing is scored again: no Triton. Studies with no prediction yet are
counted (``awaiting_score``): a worker has them uncommitted and writes them when it gets to them.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from pydantic import ValidationError

from cxr_triage import topics
from cxr_triage.events import PredictionEventV1, StudyEventV1, VerdictEventV1
from cxr_triage.kafka_config import consumer_config
from cxr_triage.redis_client import open_redis
from cxr_triage.settings import Settings
from cxr_triage.sla import SlaPolicy
from cxr_triage.worklist.keys import WorklistKeys
from cxr_triage.worklist.rebuild import Projection, apply

log = logging.getLogger(__name__)

SOURCES: Final = (topics.STUDIES, topics.PREDICTIONS, topics.VERDICTS)
# With no message for this long while partitions are still short of their end offsets, give up (an open
# transaction that never ends, or a broker that went away).
STALL_S: Final = 60.0


class RebuildError(RuntimeError):
    """The topics could not be read to their end, or Redis could not be written."""


@dataclass(frozen=True)
class Ends:
    """Where each partition with events starts and where reading stops (its end when the rebuild began)."""

    starts: dict[tuple[str, int], int]
    ends: dict[tuple[str, int], int]

    @property
    def total(self) -> int:
        return sum(self.ends[tp] - self.starts[tp] for tp in self.ends)


def end_offsets(consumer: Consumer, names: tuple[str, ...]) -> Ends:
    metadata = consumer.list_topics(timeout=10)
    starts: dict[tuple[str, int], int] = {}
    ends: dict[tuple[str, int], int] = {}
    for name in names:
        found = metadata.topics.get(name)
        if found is None or found.error is not None:
            raise RebuildError(f"topic {name} does not exist (has `cxr-triage up` created the topics?)")
        for partition in found.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(name, partition), timeout=10)
            if high > low:
                starts[(name, partition)], ends[(name, partition)] = low, high
    return Ends(starts, ends)


def read_to_end(
    consumer: Consumer, ends: Ends, *, on_message: Callable[[], None] = lambda: None
) -> Iterator[Message]:
    """Every message of the partitions in ``ends``, each partition in order, up to its end offset."""
    consumer.assign([TopicPartition(t, p, ends.starts[(t, p)]) for t, p in ends.ends])
    remaining = dict(ends.ends)
    last_progress = time.monotonic()
    while remaining:
        batch = consumer.consume(num_messages=500, timeout=1.0)
        if not batch and time.monotonic() - last_progress > STALL_S:
            raise RebuildError(f"no progress for {STALL_S:.0f} s with {len(remaining)} partitions unread")
        for message in batch:
            where = (message.topic() or "", message.partition() or 0)
            end = remaining.get(where)
            offset = message.offset() or 0
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("Kafka reported an error while rebuilding", extra={"error": str(error)})
                elif end is not None and offset >= end:  # past trailing transaction markers
                    del remaining[where]
                continue
            last_progress = time.monotonic()
            if end is None or offset >= end:
                continue  # written after the rebuild began: the service that wrote it also wrote Redis
            on_message()
            yield message
            if offset + 1 >= end:
                del remaining[where]


def fold(messages: Iterator[Message]) -> Projection:
    projection = Projection()
    for message in messages:
        value = message.value() or b""
        try:
            match message.topic():
                case topics.STUDIES:
                    projection.add_study(StudyEventV1.from_bytes(value))
                case topics.PREDICTIONS:
                    projection.add_prediction(PredictionEventV1.from_bytes(value))
                case topics.VERDICTS:
                    projection.add_verdict(VerdictEventV1.from_bytes(value))
        except ValidationError:
            projection.skip()
    return projection


def rebuild(
    settings: Settings,
    *,
    policy: SlaPolicy | None = None,
    progress: Callable[[int], Callable[[], None]] | None = None,
) -> dict[str, float]:
    """Rebuild the worklist; returns the summary (event counts, unread / read studies, seconds).

    ``progress(total)`` is called once with the number of events to read and returns a per-event callback.
    """
    started = time.monotonic()
    client = open_redis(settings)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise RebuildError(f"Redis at {settings.redis_address} is unavailable: {exc}") from exc
    config = consumer_config(settings, group_id=f"worklist-rebuild-{uuid.uuid4().hex}", client_id="rebuild")
    # Only what producers committed (a transactional worker's aborted outputs are not the record), and the
    # end of each partition reported, so that trailing transaction markers do not hide it.
    config |= {"isolation.level": "read_committed", "enable.partition.eof": True}
    consumer = Consumer(config)
    try:
        ends = end_offsets(consumer, SOURCES)
        tick = progress(ends.total) if progress else (lambda: None)
        projection = fold(read_to_end(consumer, ends, on_message=tick))
    except KafkaException as exc:
        raise RebuildError(f"Kafka at {settings.kafka_bootstrap_servers} could not be read: {exc}") from exc
    finally:
        consumer.close()
    try:
        apply(
            client,
            keys=WorklistKeys(settings.redis_key_prefix),
            policy=policy or SlaPolicy(),
            projection=projection,
        )
    except redis.RedisError as exc:
        raise RebuildError(f"writing the worklist to Redis failed (run the rebuild again): {exc}") from exc
    finally:
        client.close()
    summary: dict[str, float] = dict(projection.summary())
    summary["seconds"] = round(time.monotonic() - started, 3)
    log.info("worklist rebuilt", extra=dict(summary))
    return summary
