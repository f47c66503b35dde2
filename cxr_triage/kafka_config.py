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
        "message.timeout.ms": 30_000,
        "message.max.bytes": 1_000_000,
        # The Java client's partitioner (librdkafka's default hashes with CRC32): the stream processors
        # (aiokafka) and Kafka Streams-style joins need a study id on the same partition number in every topic.
        "partitioner": "murmur2_random",
    }


def transactional_producer_config(
    settings: Settings, *, client_id: str, transactional_id: str, transaction_timeout_s: float = 30.0
) -> dict[str, Any]:
    """A producer whose records and consumer offsets are committed together (exactly-once read-process-write).

    ``transactional_id`` must be stable per producing process (worker index), so that a restarted process's
    ``init_transactions`` fences its predecessor and aborts the transaction it left open. The short
    transaction timeout bounds how long a crashed process's open transaction holds back read_committed
    consumers (they cannot read past it) when no successor with its id comes.
    """
    timeout_ms = int(transaction_timeout_s * 1000)
    return {
        **producer_config(settings, client_id=client_id),
        "transactional.id": transactional_id,
        "transaction.timeout.ms": timeout_ms,
        "message.timeout.ms": timeout_ms,  # librdkafka refuses a message timeout above the transaction's
    }


def consumer_config(settings: Settings, *, group_id: str, client_id: str) -> dict[str, Any]:
    # Offsets are committed by hand, only after the results are durable elsewhere (at-least-once), or in the
    # producer's transaction (exactly-once). read_committed: records of aborted transactions (a worker's batch
    # that failed after producing) are never seen; librdkafka's default, stated because the Java and aiokafka
    # clients default to read_uncommitted.
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
