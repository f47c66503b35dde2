"""Events the API produces: verdicts (awaited until Kafka acknowledges them) and audit records (not awaited).

One confluent-kafka producer per purpose, each with a thread that serves its delivery callbacks. A verdict
waits on an asyncio future settled by its delivery report, so a radiologist is told "saved" only once the
verdict is durable in Kafka. Audit records are handed to librdkafka and the request goes on; they are flushed
when the API stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from redis.exceptions import RedisError

from cxr_triage import topics
from cxr_triage.events import AuditAction, AuditEventV1, AuditOutcome, Event
from cxr_triage.kafka_config import producer_config
from cxr_triage.settings import Settings
from priority_queue_api.errors import ApiError
from priority_queue_api.users import User

log = logging.getLogger(__name__)


class DeliveryFailed(RuntimeError):
    """Kafka did not acknowledge the event in time (or refused it)."""


@dataclass(frozen=True)
class Delivered:
    """Where Kafka put an acknowledged event: proof that it is in the log."""

    partition: int
    offset: int


class EventSink:
    def __init__(self, settings: Settings, *, client_id: str, timeout_s: float) -> None:
        config = producer_config(settings, client_id=client_id)
        config["message.timeout.ms"] = int(timeout_s * 1000)
        config["logger"] = logging.getLogger("librdkafka")
        self.timeout_s = timeout_s
        self._producer = Producer(config)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"{client_id}-poll", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    async def deliver(self, topic: str, key: str, event: Event) -> Delivered:
        """Produce ``event`` and return where it landed once Kafka has acknowledged it; ``DeliveryFailed``
        otherwise."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[tuple[KafkaError | None, Delivered]] = loop.create_future()

        def settle(err: KafkaError | None, msg: Message) -> None:
            where = Delivered(partition=msg.partition() or 0, offset=msg.offset() or 0)

            def _set() -> None:
                if not done.done():
                    done.set_result((err, where))

            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                loop.call_soon_threadsafe(_set)

        try:
            self._producer.produce(topic, key=key.encode(), value=event.to_bytes(), on_delivery=settle)
        except (BufferError, KafkaException) as exc:
            raise DeliveryFailed(f"could not queue the event: {exc}") from exc
        try:
            err, where = await asyncio.wait_for(done, self.timeout_s + 1.0)
        except TimeoutError as exc:
            raise DeliveryFailed(f"no acknowledgement within {self.timeout_s:.0f} s") from exc
        if err is not None:
            raise DeliveryFailed(str(err))
        return where

    def send(self, topic: str, key: str, event: Event, on_failure: Callable[[str], None]) -> None:
        """Produce without waiting; ``on_failure`` runs (on the poll thread) if delivery fails."""

        def report(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                on_failure(str(err))

        try:
            self._producer.produce(topic, key=key.encode(), value=event.to_bytes(), on_delivery=report)
        except (BufferError, KafkaException) as exc:
            on_failure(str(exc))

    def close(self, timeout_s: float) -> int:
        """Stop serving callbacks after flushing; returns how many events were left undelivered."""
        remaining = self._producer.flush(timeout_s)
        self._stop.set()
        self._thread.join(timeout=5)
        if remaining:
            log.error("events left undelivered at shutdown", extra={"count": remaining})
        return int(remaining)


@dataclass
class Auditor:
    """Records who did what on ``cxr.audit.v1``; never blocks a request and never fails one."""

    sink: EventSink
    on_undelivered: Callable[[], None] = lambda: None

    def _failed(self, error: str) -> None:
        self.on_undelivered()
        log.error("audit event undelivered", extra={"error": error})

    def record(
        self,
        user: User,
        action: AuditAction,
        resource: str,
        outcome: AuditOutcome,
        *,
        study_id: str | None = None,
        status_code: int | None = None,
    ) -> None:
        event = AuditEventV1(
            actor=user.name,
            role=user.role.value,
            action=action,
            resource=resource,
            study_id=study_id,
            outcome=outcome,
            status_code=status_code,
        )
        self.sink.send(topics.AUDIT, user.name, event, self._failed)
        log.debug(
            "audit", extra={"actor": user.name, "action": action, "resource": resource, "outcome": outcome}
        )

    @contextlib.contextmanager
    def recording(
        self, user: User, action: AuditAction, resource: str, study_id: str | None = None
    ) -> Iterator[AuditSubject]:
        """Audit the enclosed work with an outcome taken from how it ended.

        The work may name the study it turned out to concern (a claim) through the yielded subject.
        """
        subject = AuditSubject(study_id)
        try:
            yield subject
        except ApiError as exc:
            outcome = _OUTCOMES.get(exc.status_code, "error")
            self.record(
                user, action, resource, outcome, study_id=subject.study_id, status_code=exc.status_code
            )
            raise
        except RedisError:
            self.record(user, action, resource, "unavailable", study_id=subject.study_id, status_code=503)
            raise
        except Exception:
            self.record(user, action, resource, "error", study_id=subject.study_id, status_code=500)
            raise
        self.record(user, action, resource, "ok", study_id=subject.study_id, status_code=200)


@dataclass
class AuditSubject:
    study_id: str | None


_OUTCOMES: dict[int, AuditOutcome] = {
    400: "invalid",
    403: "denied",
    404: "not_found",
    409: "conflict",
    413: "invalid",
    422: "invalid",
    503: "unavailable",
}
