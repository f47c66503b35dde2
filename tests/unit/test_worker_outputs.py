"""Kafka outputs of the worker: delivery-checked publishing and dead letter events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Message

from cxr_triage import topics
from cxr_triage.events import DeadLetterEventV1
from inference_worker.batching import IMAGE_REJECTED, INVALID_EVENT, Rejected, prepare_one
from inference_worker.dead_letters import MAX_ORIGINAL_BYTES, dead_letter
from inference_worker.errors import StageUnavailable
from inference_worker.publisher import KafkaPublisher, Outgoing
from inference_worker.records import Record


class FakeProducer:
    def __init__(self, *, error: KafkaError | None = None, remaining: int = 0, full: int = 0) -> None:
        self.error = error
        self.remaining = remaining
        self.full = full
        self.pending: list[tuple[Callable[..., None], Message]] = []
        self.sent: list[tuple[str, str | None, bytes]] = []

    def produce(self, topic: str, *, key: str | None, value: bytes, on_delivery: Callable[..., None]) -> None:
        if self.full:
            self.full -= 1
            raise BufferError("queue full")
        self.sent.append((topic, key, value))
        self.pending.append((on_delivery, Message(topic=topic, value=value)))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float = -1) -> int:
        for callback, message in self.pending:
            callback(self.error, message)
        self.pending.clear()
        return self.remaining


def letter(value: bytes | None = b"{}") -> DeadLetterEventV1:
    record = Record(topics.STUDIES, 2, 41, b"S-1", value)
    return dead_letter(Rejected(record, IMAGE_REJECTED, "blank", "ImageRejected", study_id="S-1"))


def outgoing() -> list[Outgoing]:
    return [Outgoing(topics.DLQ, "S-1", letter()), Outgoing(topics.DLQ, None, letter())]


def publisher_with(*producers: FakeProducer) -> KafkaPublisher:
    queue = list(producers)
    return KafkaPublisher(lambda: queue.pop(0), flush_timeout_s=0.1)  # type: ignore[arg-type,return-value]


def test_publish_returns_when_all_are_delivered() -> None:
    producer = FakeProducer()
    publisher_with(producer).publish(outgoing())
    assert [(t, k) for t, k, _ in producer.sent] == [(topics.DLQ, "S-1"), (topics.DLQ, None)]
    assert DeadLetterEventV1.from_bytes(producer.sent[0][2]).original_offset == 41


def test_unacknowledged_messages_fail_the_publish() -> None:
    with pytest.raises(StageUnavailable, match="not acknowledged") as info:
        publisher_with(FakeProducer(remaining=1)).publish(outgoing())
    assert info.value.stage == "kafka"


def test_delivery_errors_fail_the_publish() -> None:
    with pytest.raises(StageUnavailable, match="not delivered"):
        publisher_with(FakeProducer(error=KafkaError(KafkaError._MSG_TIMED_OUT))).publish(outgoing())


def test_fatal_error_renews_the_producer() -> None:
    broken = FakeProducer(error=KafkaError(KafkaError._FATAL, "fenced", fatal=True))
    fresh = FakeProducer()
    publisher = publisher_with(broken, fresh)
    with pytest.raises(StageUnavailable):
        publisher.publish(outgoing())
    publisher.publish(outgoing())
    assert len(fresh.sent) == 2


def test_full_queue_is_waited_out() -> None:
    producer = FakeProducer(full=3)
    publisher_with(producer).publish(outgoing())
    assert len(producer.sent) == 2


def test_produce_exception_is_stage_unavailable() -> None:
    class Failing(FakeProducer):
        def produce(self, *args: Any, **kwargs: Any) -> None:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))

    with pytest.raises(StageUnavailable):
        publisher_with(Failing()).publish(outgoing())


def test_dead_letter_carries_the_original_and_where_it_was() -> None:
    event = letter(b'{"study_id": "S-1"}')
    assert event.stage == "worker"
    assert event.error_type == "image_rejected:ImageRejected"
    assert event.original == '{"study_id": "S-1"}'
    assert (event.original_topic, event.original_partition, event.original_offset) == (topics.STUDIES, 2, 41)


def test_dead_letter_cuts_huge_originals() -> None:
    event = letter(b"x" * (MAX_ORIGINAL_BYTES + 10))
    assert event.original is not None
    assert event.original.startswith("x" * MAX_ORIGINAL_BYTES)
    assert event.original.endswith(f"[cut: {MAX_ORIGINAL_BYTES + 10} bytes in all]")
    assert len(event.to_bytes()) < 100_000


@pytest.mark.parametrize(
    ("key", "study_id"), [(b"S-7", "S-7"), (b"../etc", None), (None, None), (b"\xff\xfe", None)]
)
def test_study_id_of_an_unparseable_event_comes_from_a_valid_key(
    key: bytes | None, study_id: str | None
) -> None:
    outcome = prepare_one(Record(topics.STUDIES, 0, 0, key, b"\x00garbage"), store=None, input_size=32)  # type: ignore[arg-type]
    assert isinstance(outcome, Rejected)
    assert outcome.reason_class == INVALID_EVENT
    assert outcome.study_id == study_id
    assert outcome.reason.startswith("invalid study event: ")
