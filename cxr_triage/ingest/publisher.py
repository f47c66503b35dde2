"""Publishing of study events and producer-side dead letters to Kafka, with delivery confirmed."""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Self

from confluent_kafka import KafkaError, Message, Producer

from cxr_triage import topics
from cxr_triage.events import DeadLetterEventV1, Event
from cxr_triage.kafka_config import producer_config
from cxr_triage.settings import Settings

log = logging.getLogger(__name__)


class DeliveryFailed(RuntimeError):
    """Kafka did not acknowledge some events; they must be produced again (ids make that harmless)."""


class EventPublisher:
    def __init__(self, settings: Settings, *, client_id: str) -> None:
        self._producer = Producer(producer_config(settings, client_id=client_id))
        # Never give up before librdkafka does: a message it still retries is neither sent nor failed yet.
        self._flush_s = settings.kafka_message_timeout_s + 5.0
        self._failures: list[str] = []

    def publish(self, topic: str, key: str, event: Event) -> None:
        self._producer.produce(topic, key=key.encode(), value=event.to_bytes(), on_delivery=self._on_delivery)
        self._producer.poll(0)

    def dead_letter(self, event: DeadLetterEventV1) -> None:
        self.publish(topics.DLQ, event.sha256 or event.study_id or "unknown", event)

    def flush(self, timeout_s: float | None = None) -> None:
        remaining = self._producer.flush(self._flush_s if timeout_s is None else timeout_s)
        if remaining or self._failures:
            failures, self._failures = self._failures, []
            raise DeliveryFailed(f"{remaining} undelivered, {len(failures)} failed: {failures[:3]}")

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            log.error("kafka delivery failed", extra={"topic": msg.topic(), "error": str(err)})
            self._failures.append(str(err))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._producer.flush(10.0)
