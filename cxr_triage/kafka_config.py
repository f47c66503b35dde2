"""librdkafka settings shared by every producer and consumer, so delivery guarantees are set in one place."""

from __future__ import annotations

from typing import Any

from cxr_triage.settings import Settings


def producer_config(settings: Settings, *, client_id: str) -> dict[str, Any]:
    # Idempotence + acks=all: a retried send never duplicates or reorders within a partition.
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "client.id": client_id,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "message.timeout.ms": int(settings.kafka_message_timeout_s * 1000),
        "message.max.bytes": 1_000_000,
        # The Java client's partitioner (librdkafka's default hashes with CRC32): the stream processors
        # (aiokafka) and Kafka Streams-style joins need a study id on the same partition number in every topic.
        "partitioner": "murmur2_random",
    }


def consumer_config(settings: Settings, *, group_id: str, client_id: str) -> dict[str, Any]:
    # Offsets are committed by hand, only after the results are durable elsewhere (at-least-once).
    # read_committed is librdkafka's default, stated because the Java and aiokafka clients default otherwise.
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "group.id": group_id,
        "client.id": client_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": 10_000,
        "max.poll.interval.ms": 300_000,
        "isolation.level": "read_committed",
    }
