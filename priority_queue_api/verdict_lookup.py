"""Whether ``cxr.verdicts.v1`` already holds a pending verdict, for a retry that must neither duplicate nor lose it.

A retry finds the event it kept before sending (``cxr_triage.worklist.verdicts.pending_verdict``). When the
API noted Kafka's acknowledgement (partition and offset of the delivery report) the retry trusts it: acks=all
made the record durable. When it could not note it (Redis failed right after the ack, the API was killed,
or the acknowledgement never came although the broker wrote the record) only Kafka knows, so the retry looks:

- every partition of the topic, not just the key's: a partition count raised since then moves the key, and
  verdicts are few (a radiologist's pace), so reading them all costs little;
- from ``offsets_for_times(decided_at - margin)``: the event's CreateTime is set at produce time, after
  ``decided_at`` (the margin covers a broker stamping LogAppendTime with another clock) up to the end the
  consumer sees (end of partition events, which also step over transaction markers);
- with a throwaway consumer that is assigned, never subscribed, and commits nothing (its group never exists
  on the broker), read_committed like every consumer of the record, bounded by ``timeout_s``;
- in a thread (``asyncio.to_thread``): librdkafka's calls block.

Found → the retry only runs the Redis script; not found → it publishes; the topic not read to its end in
time (Kafka unreachable) → ``LookupFailed`` and the API answers 503: never a blind publish.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Final

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from cxr_triage import topics
from cxr_triage.events import VerdictEventV1
from cxr_triage.settings import Settings

log = logging.getLogger(__name__)

MARGIN_S: Final = 300.0


class LookupFailed(RuntimeError):
    """Kafka could not be read far enough to say whether it holds the verdict."""


@dataclass(frozen=True)
class VerdictLookup:
    bootstrap_servers: str
    timeout_s: float
    topic: str = topics.VERDICTS
    margin_s: float = MARGIN_S

    @classmethod
    def from_settings(cls, settings: Settings, *, timeout_s: float) -> VerdictLookup:
        return cls(settings.kafka_bootstrap_servers, timeout_s)

    async def published(self, event: VerdictEventV1) -> bool:
        """Whether the topic holds a record of ``event.verdict_id``; ``LookupFailed`` if that cannot be told."""
        return await asyncio.to_thread(self._search, event)

    def _consumer(self) -> Consumer:
        return Consumer(
            {
                "bootstrap.servers": self.bootstrap_servers,
                # librdkafka wants a group; assign() without commits never creates it on the broker.
                "group.id": f"cxr-api-verdict-lookup-{uuid.uuid4()}",
                "client.id": "cxr-api-verdict-lookup",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
            }
        )

    def _search(self, event: VerdictEventV1) -> bool:
        deadline = time.monotonic() + self.timeout_s

        def left_s() -> float:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LookupFailed(f"{self.topic} not read to its end within {self.timeout_s:.0f} s")
            return remaining

        since_ms = int((event.decided_at.timestamp() - self.margin_s) * 1000)
        key = event.key.encode()
        consumer = self._consumer()
        try:
            meta = consumer.list_topics(self.topic, timeout=left_s()).topics.get(self.topic)
            if meta is None or meta.error is not None or not meta.partitions:
                raise LookupFailed(f"{self.topic} is not known to the broker: {meta.error if meta else None}")
            wanted = [TopicPartition(self.topic, p, since_ms) for p in sorted(meta.partitions)]
            starts = consumer.offsets_for_times(wanted, timeout=left_s())
            todo: list[TopicPartition] = []
            for start in starts:
                if start.error is not None:
                    raise LookupFailed(f"no offset for a time on partition {start.partition}: {start.error}")
                end = consumer.get_watermark_offsets(
                    TopicPartition(self.topic, start.partition), timeout=left_s()
                )[1]
                # A negative offset: nothing written since; a start at the end: nothing to read.
                if 0 <= start.offset < end:
                    todo.append(start)
            left = {tp.partition for tp in todo}
            if left:
                consumer.assign(todo)
            read = 0
            while left:
                msg = consumer.poll(min(0.5, left_s()))
                if msg is None:
                    continue
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        left.discard(msg.partition() or 0)
                    elif error.fatal():
                        raise LookupFailed(str(error))
                    continue  # transient: librdkafka retries, the deadline bounds it
                read += 1
                if msg.key() == key and _verdict_id(msg.value()) == event.verdict_id:
                    log.info(
                        "pending verdict found in Kafka",
                        extra={"partition": msg.partition(), "offset": msg.offset(), "read": read},
                    )
                    return True
            log.info("pending verdict not in Kafka", extra={"partitions": len(todo), "read": read})
            return False
        except KafkaException as exc:
            raise LookupFailed(str(exc)) from exc
        finally:
            consumer.close()


def _verdict_id(value: bytes | None) -> str | None:
    if not value:  # a tombstone
        return None
    try:
        return VerdictEventV1.from_bytes(value).verdict_id
    except ValueError:  # not a verdict of this schema: not the one looked for
        return None
