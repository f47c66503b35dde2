"""The retrain worker's Kafka side: requests in, results out, at-least-once, never training twice.

* Requests (``cxr.training-requests.v1``) are read in the worker's own consumer group; a request's offset is
  committed only after its result is acknowledged on ``cxr.training-results.v1``. A crash in between means the
  request is read again.
* That re-read, a request published twice, or a request another worker already answered, is recognised by
  its ``request_id`` in the results topic: the worker reads that topic's whole history at start (it is kept
  forever) and catches up again before each request, so an answered request is committed and skipped.
* Training takes minutes, longer than ``max.poll.interval.ms``: meanwhile a thread keeps polling the paused
  consumer so that the worker stays in its group (``KeepAlive``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, Protocol

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from pydantic import ValidationError

from cxr_triage import topics
from cxr_triage.events import TrainingRequestEventV1, TrainingResultEventV1
from cxr_triage.kafka_config import consumer_config, producer_config
from cxr_triage.settings import Settings

logger = logging.getLogger(__name__)

Handled = Literal["promoted", "rejected", "failed", "duplicate", "invalid"]


class Answered(Protocol):
    def refresh(self) -> None:
        """Catch up with results published since the last call."""
        ...

    def __contains__(self, request_id: object) -> bool: ...

    def add(self, request_id: str) -> None: ...


class ResultsHistory:
    """Request ids answered on the results topic, read with an assigned (group-less) consumer."""

    def __init__(self, settings: Settings, *, timeout_s: float = 30.0) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap_servers,
                "group.id": f"cxr-retrain-history-{uuid.uuid4().hex[:8]}",  # never commits
                "client.id": "cxr-retrain-history",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        self._timeout_s = timeout_s
        self._ids: set[str] = set()
        self._assigned = False

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, request_id: str) -> None:
        self._ids.add(request_id)

    def _assign(self) -> list[TopicPartition]:
        meta = self._consumer.list_topics(topics.TRAINING_RESULTS, timeout=self._timeout_s)
        topic = meta.topics[topics.TRAINING_RESULTS]
        if topic.error is not None:
            raise KafkaException(topic.error)
        partitions = [
            TopicPartition(topics.TRAINING_RESULTS, p, OFFSET_BEGINNING) for p in sorted(topic.partitions)
        ]
        if not self._assigned:
            self._consumer.assign(partitions)
            self._assigned = True
        return partitions

    def refresh(self) -> None:
        """Read up to the current end of every partition; ``KafkaException`` when the broker does not answer."""
        partitions = self._assign()
        ends = {}
        for tp in partitions:
            low, high = self._consumer.get_watermark_offsets(tp, timeout=self._timeout_s, cached=False)
            if high > low:  # an empty partition has nothing to wait for
                ends[tp.partition] = high
        deadline = time.monotonic() + self._timeout_s
        while not self._caught_up(ends):
            if time.monotonic() > deadline:
                raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "results topic not read to its end"))
            message = self._consumer.poll(0.5)
            if message is None or message.error() is not None:
                continue
            self._read(message)

    def _caught_up(self, ends: dict[int, int]) -> bool:
        if not ends:
            return True
        positions = self._consumer.position([TopicPartition(topics.TRAINING_RESULTS, p) for p in ends])
        return all(tp.offset >= end for tp, end in zip(positions, ends.values(), strict=True))

    def _read(self, message: Message) -> None:
        value = message.value()
        try:
            result = TrainingResultEventV1.from_bytes(value or b"")
        except ValidationError:
            logger.warning("unreadable record on the results topic", extra={"offset": message.offset()})
            return
        self._ids.add(result.request_id)

    def close(self) -> None:
        self._consumer.close()


@dataclass
class RequestProcessor:
    """What to do with one request record; Kafka-free, so its decisions are tested without a broker."""

    handle: Callable[[TrainingRequestEventV1], TrainingResultEventV1]
    answered: Answered
    publish: Callable[[TrainingResultEventV1], None]

    def process(self, value: bytes | None) -> tuple[Handled, TrainingResultEventV1 | None]:
        try:
            request = TrainingRequestEventV1.from_bytes(value or b"")
        except ValidationError as exc:
            # Nothing to answer (no request id can be trusted): skipped, so it cannot block the queue.
            logger.error("unreadable training request skipped", extra={"errors": exc.error_count()})
            return "invalid", None
        self.answered.refresh()
        if request.request_id in self.answered:
            logger.info("request already answered: skipped", extra={"request_id": request.request_id})
            return "duplicate", None
        result = self.handle(request)
        self.publish(result)
        self.answered.add(request.request_id)
        return result.outcome, result


class ResultPublisher:
    def __init__(self, settings: Settings, *, timeout_s: float = 30.0, attempts: int = 10) -> None:
        self._producer = Producer(producer_config(settings, client_id="cxr-retrain-worker"))
        self._timeout_s = timeout_s
        self._attempts = attempts

    def __call__(self, result: TrainingResultEventV1) -> None:
        """Publish and wait for the broker's ack; retried, since the training behind it is expensive."""
        for attempt in range(1, self._attempts + 1):
            errors: list[KafkaError] = []

            def delivered(err: KafkaError | None, _msg: Message, errors: list[KafkaError] = errors) -> None:
                if err is not None:
                    errors.append(err)

            self._producer.produce(
                topics.TRAINING_RESULTS,
                key=result.request_id.encode(),
                value=result.to_bytes(),
                on_delivery=delivered,
            )
            left = self._producer.flush(self._timeout_s)
            if left == 0 and not errors:
                return
            logger.warning(
                "result not acknowledged, retrying",
                extra={"request_id": result.request_id, "attempt": attempt, "error": str(errors[:1])},
            )
            time.sleep(min(2.0**attempt, 30.0))
        raise KafkaException(
            KafkaError(KafkaError._MSG_TIMED_OUT, "the training result was not acknowledged")
        )


class KeepAlive:
    """Polls a paused consumer from a thread while the main thread trains (the group keeps the worker).

    A partition assigned meanwhile (a rebalance) is not paused; a record it delivers is rewound and the
    partition paused, so it is read again after the current request.
    """

    def __init__(self, consumer: Consumer, *, interval_s: float = 1.0) -> None:
        self._consumer = consumer
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="retrain-keepalive", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._consumer.poll(self._interval_s)
            if message is not None and message.error() is None:
                tp = TopicPartition(str(message.topic()), message.partition() or 0, message.offset() or 0)
                self._consumer.pause([tp])
                self._consumer.seek(tp)

    @contextmanager
    def running(self) -> Iterator[None]:
        self._consumer.pause(self._consumer.assignment())
        self._thread.start()
        try:
            yield
        finally:
            self._stop.set()
            self._thread.join()
            self._consumer.resume(self._consumer.assignment())


class RequestConsumer:
    """The loop: one request at a time, committed after its result (or its skip) is settled."""

    def __init__(self, settings: Settings, group: str, processor: RequestProcessor) -> None:
        self._consumer = Consumer(consumer_config(settings, group_id=group, client_id="cxr-retrain-worker"))
        self._processor = processor
        self._consumer.subscribe([topics.TRAINING_REQUESTS])

    def _rewind(self, message: Message) -> None:
        tp = TopicPartition(str(message.topic()), message.partition() or 0, message.offset() or 0)
        try:
            self._consumer.seek(tp)
        except KafkaException as exc:  # revoked meanwhile: its new owner reads from the last commit
            logger.info("could not seek back", extra={"error": str(exc)})

    def next(
        self, *, timeout_s: float, retry_s: float = 5.0
    ) -> tuple[Handled, TrainingResultEventV1 | None] | None:
        """Handle the next request if one arrives within ``timeout_s``; None otherwise."""
        message = self._consumer.poll(timeout_s)
        if message is None:
            return None
        error = message.error()
        if error is not None:
            if error.fatal():
                raise KafkaException(error)
            return None
        try:
            with KeepAlive(self._consumer).running():
                handled = self._processor.process(message.value())
        except KafkaException as exc:
            # The results topic could not be read or a result not published: read this request again later
            # (if its result did get through, it is then recognised and skipped).
            logger.warning("Kafka unavailable; the request will be read again", extra={"error": str(exc)})
            self._rewind(message)
            time.sleep(retry_s)
            return None
        try:
            self._consumer.commit(message=message, asynchronous=False)
        except KafkaException as exc:
            # The result is published: a redelivery is recognised by its request id and skipped.
            logger.warning(
                "commit failed; the request will be skipped when redelivered", extra={"error": str(exc)}
            )
        return handled

    def close(self) -> None:
        self._consumer.close()


def describe(handled: tuple[Handled, TrainingResultEventV1 | None]) -> str:
    what, result = handled
    return json.dumps({"handled": what, **({"result": json.loads(result.to_bytes())} if result else {})})
