"""Kafka output of the worker (predictions and dead letters), confirmed before the batch is committed."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from confluent_kafka import KafkaError, KafkaException, Message, Producer

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
