"""Consumer lag of every consumer group on our topics, and each topic's size, read with Kafka's admin API."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import ConsumerGroupTopicPartitions, IsolationLevel, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from cxr_triage import topics
from cxr_triage.settings import Settings

_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    lag: int


@dataclass(frozen=True)
class KafkaSnapshot:
    lags: list[PartitionLag]
    end_offsets: dict[str, int]  # per topic, summed over its partitions (messages ever written)


class KafkaLagReader:
    """One admin client, kept; ``read`` blocks for at most a few admin round trips."""

    def __init__(self, settings: Settings, *, watched: Iterable[str] = topics.ALL) -> None:
        self._admin = AdminClient(
            {
                "bootstrap.servers": settings.kafka_bootstrap_servers,
                "client.id": "cxr-api-lag",
                # Kafka down: the monitor counts and logs each failed refresh once; librdkafka's own line per
                # reconnect attempt would only repeat it.
                "log_level": 2,
                "reconnect.backoff.max.ms": 10_000,
            }
        )
        self._watched = tuple(watched)

    def read(self) -> KafkaSnapshot:
        metadata = self._admin.list_topics(timeout=_TIMEOUT_S)
        partitions = [
            TopicPartition(name, p)
            for name in self._watched
            if name in metadata.topics
            for p in metadata.topics[name].partitions
        ]
        latest = self._offsets(partitions, OffsetSpec.latest())
        earliest = self._offsets(partitions, OffsetSpec.earliest())
        end_offsets: dict[str, int] = {}
        for (name, _), offset in latest.items():
            end_offsets[name] = end_offsets.get(name, 0) + offset
        return KafkaSnapshot(self._lags(latest, earliest), end_offsets)

    def _offsets(self, partitions: list[TopicPartition], spec: OffsetSpec) -> dict[tuple[str, int], int]:
        if not partitions:
            return {}
        futures = self._admin.list_offsets(
            {tp: spec for tp in partitions},
            isolation_level=IsolationLevel.READ_COMMITTED,
            request_timeout=_TIMEOUT_S,
        )
        return {(tp.topic, tp.partition): int(f.result().offset) for tp, f in futures.items()}

    def _lags(
        self, latest: dict[tuple[str, int], int], earliest: dict[tuple[str, int], int]
    ) -> list[PartitionLag]:
        groups = self._admin.list_consumer_groups(request_timeout=_TIMEOUT_S).result()
        ids = sorted(g.group_id for g in groups.valid)
        if not ids:
            return []
        lags = []
        for group in ids:
            # One group per request: the admin API takes no more.
            (future,) = self._admin.list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(group)], request_timeout=_TIMEOUT_S
            ).values()
            for tp in future.result().topic_partitions or []:
                key = (tp.topic, tp.partition)
                if key not in latest:
                    continue  # a topic that is not ours
                # A group that never committed on a partition starts at its earliest offset (our consumers'
                # auto.offset.reset): everything still in the partition is its lag.
                position = tp.offset if tp.offset >= 0 else earliest.get(key, 0)
                lags.append(PartitionLag(group, tp.topic, tp.partition, max(latest[key] - position, 0)))
        return lags
