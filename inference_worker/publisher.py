"""Kafka output of the worker (predictions and dead letters), confirmed before the batch is committed.

Two ways: ``KafkaPublisher`` (idempotent producer; the worker commits its offsets afterwards: at-least-once,
so a batch redelivered after a rebalance is published again) and ``TransactionalPublisher`` (the outputs and
the batch's offsets in one Kafka transaction: a batch that loses its partitions before its commit is aborted
and read_committed consumers never see it, so each study's prediction is on the topic once).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from cxr_triage.events import Event
from inference_worker.errors import StageUnavailable

logger = logging.getLogger(__name__)

STAGE = "kafka"


@dataclass(frozen=True)
class Outgoing:
    topic: str
    key: str | None
    event: Event


class EventPublisher(Protocol):
    def publish(self, messages: Sequence[Outgoing]) -> None:
        """Return once every message is acknowledged by the brokers; ``StageUnavailable`` otherwise."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class OffsetCommittingPublisher(EventPublisher, Protocol):
    def publish_committing(
        self, messages: Sequence[Outgoing], offsets: Sequence[TopicPartition], group_metadata: object
    ) -> None:
        """Publish ``messages`` and commit the consumer ``offsets`` atomically; ``StageUnavailable``: neither."""
        ...

    def renew(self) -> None:
        """Start the next transaction on a fresh producer (called between batches, none open)."""
        ...


class KafkaPublisher:
    def __init__(self, producer_factory: Callable[[], Producer], *, flush_timeout_s: float = 30.0) -> None:
        self._factory = producer_factory
        self._producer = producer_factory()
        self.flush_timeout_s = flush_timeout_s

    def publish(self, messages: Sequence[Outgoing]) -> None:
        if not messages:
            return
        failures: list[KafkaError] = []  # this call's own reports: an earlier attempt's may still arrive

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                failures.append(err)

        try:
            for message in messages:
                self._produce(message, on_delivery)
            remaining = self._producer.flush(self.flush_timeout_s)
        except KafkaException as exc:
            raise StageUnavailable(STAGE, f"produce failed: {exc}") from exc
        if remaining:
            raise StageUnavailable(
                STAGE, f"{remaining} message(s) not acknowledged in {self.flush_timeout_s}s"
            )
        if failures:
            if any(err.fatal() for err in failures):
                self._renew_producer()
            raise StageUnavailable(STAGE, f"{len(failures)} message(s) not delivered: {failures[0].str()}")

    def _produce(self, message: Outgoing, on_delivery: Callable[[KafkaError | None, Message], None]) -> None:
        for _ in range(50):
            try:
                self._producer.produce(
                    message.topic, key=message.key, value=message.event.to_bytes(), on_delivery=on_delivery
                )
                return
            except BufferError:  # local queue full: let librdkafka send some, then try again
                self._producer.poll(0.1)
        raise StageUnavailable(STAGE, "local producer queue stayed full")

    def _renew_producer(self) -> None:
        # An idempotent producer that hit a fatal error refuses every later message: start a fresh one.
        logger.warning("Kafka producer hit a fatal error; creating a new one")
        self._producer = self._factory()

    def close(self) -> None:
        remaining = self._producer.flush(self.flush_timeout_s)
        if remaining:
            logger.warning("Kafka producer closed with unsent messages", extra={"remaining": remaining})


class TransactionalPublisher:
    """Each batch's outputs and consumer offsets in one transaction (exactly-once for the worker's Kafka output).

    The producer's ``transactional.id`` is the worker's own (``kafka_config.transactional_producer_config``):
    ``init_transactions`` on a fresh producer fences an earlier one with that id (a restarted or a zombie
    worker) and aborts what it left open. Any failure aborts the transaction (or, if even that fails, drops the
    producer so that the next one fences it), and the worker reads the batch again; the Redis write before it
    is an idempotent upsert.

    Not wired by ``app`` yet: across a broker restart (tests/integration/test_kafka_restart.py) librdkafka
    2.16's ``send_offsets_to_transaction`` blocked past its timeout for minutes (librdkafka issues #5456 and
    #5511, open), and with ``renew`` on rebalances committed predictions went missing for read_committed
    readers; the at-least-once ``KafkaPublisher`` with identical republishing stays until that is understood.
    """

    def __init__(
        self,
        producer_factory: Callable[[], Producer],
        *,
        timeout_s: float = 30.0,
        commit_retry_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._factory = producer_factory
        self._producer: Producer | None = None
        self.timeout_s = timeout_s
        # A commit that timed out has an unknown outcome; committing again is how to learn it, while
        # aborting might throw away a transaction the broker already committed (and publish the batch twice).
        self.commit_retry_s = commit_retry_s
        self._clock = clock

    def publish(self, messages: Sequence[Outgoing]) -> None:
        self.publish_committing(messages, [], None)

    def publish_committing(
        self, messages: Sequence[Outgoing], offsets: Sequence[TopicPartition], group_metadata: object
    ) -> None:
        if not messages and not offsets:
            return
        producer = self._ready()
        try:
            producer.begin_transaction()
            for message in messages:
                self._produce(producer, message)
            if offsets:
                producer.send_offsets_to_transaction(list(offsets), group_metadata, self.timeout_s)
            self._commit(producer)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            self._abort(producer, error)
            raise StageUnavailable(STAGE, f"transaction aborted: {error.str()}") from exc

    def renew(self) -> None:
        # librdkafka may keep a stale group coordinator across a broker restart, and then
        # send_offsets_to_transaction blocks past its timeout, for good (librdkafka issues #5456, #5511). The
        # group changes after such an outage (the session times out), so the worker renews its producer on
        # every assignment change: a fresh one looks the coordinator up again.
        if self._producer is not None:
            logger.info("renewing the transactional producer")
            self._producer = None

    def _ready(self) -> Producer:
        if self._producer is None:
            producer = self._factory()
            try:
                producer.init_transactions(self.timeout_s)
            except KafkaException as exc:
                raise StageUnavailable(STAGE, f"cannot start transactions: {exc.args[0].str()}") from exc
            self._producer = producer
        return self._producer

    def _produce(self, producer: Producer, message: Outgoing) -> None:
        # No delivery callback: a record that fails makes the transaction fail to commit.
        for _ in range(50):
            try:
                producer.produce(message.topic, key=message.key, value=message.event.to_bytes())
                return
            except BufferError:
                producer.poll(0.1)
        raise StageUnavailable(STAGE, "local producer queue stayed full")

    def _commit(self, producer: Producer) -> None:
        deadline = self._clock() + self.commit_retry_s
        while True:
            try:
                producer.commit_transaction(self.timeout_s)
                return
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if not error.retriable() or error.txn_requires_abort() or self._clock() >= deadline:
                    raise
                logger.warning(
                    "transaction commit not confirmed yet; committing again", extra={"error": error.str()}
                )

    def _abort(self, producer: Producer, error: KafkaError) -> None:
        if not error.fatal():
            try:
                producer.abort_transaction(self.timeout_s)
                logger.warning("batch transaction aborted", extra={"error": error.str()})
                return
            except KafkaException as exc:
                error = exc.args[0]
        # Fenced, fatal, or not even abortable now: the next producer's init_transactions resolves it.
        logger.warning("dropping the transactional producer", extra={"error": error.str()})
        self._producer = None

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self.timeout_s)
