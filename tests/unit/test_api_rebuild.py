"""The rebuild's reading and folding of the topics, with a stand-in consumer (no Kafka, no Redis)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import KafkaError

from cxr_triage import topics
from cxr_triage.events import PredictionEventV1, StudyEventV1, VerdictEventV1
from cxr_triage.labels import LABELS
from cxr_triage.sla import Tier
from priority_queue_api import rebuild
from priority_queue_api.rebuild import Ends, fold, read_to_end

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


@dataclass
class Msg:
    _topic: str
    _partition: int
    _offset: int
    _value: bytes = b""
    _error: KafkaError | None = None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value

    def error(self) -> KafkaError | None:
        return self._error


class FakeConsumer:
    def __init__(self, batches: list[list[Msg]]) -> None:
        self.batches = batches
        self.assigned: list[Any] = []

    def assign(self, partitions: list[Any]) -> None:
        self.assigned = partitions

    def consume(self, num_messages: int, timeout: float) -> list[Msg]:
        return self.batches.pop(0) if self.batches else []


def _study(i: int) -> StudyEventV1:
    return StudyEventV1(
        study_id=f"s{i}",
        image_uri=f"file:///img/{i}.png",
        sha256=f"{i:064x}",
        content_type="image/png",
        size_bytes=10,
        received_at=T0,
    )


def _prediction(i: int, priority: float, tier: Tier | None = Tier.URGENT) -> PredictionEventV1:
    return PredictionEventV1(
        study_id=f"s{i}",
        model_name="m",
        model_version="1",
        probabilities={label: 0.5 for label in LABELS},
        priority=priority,
        received_at=T0,
        scored_at=T0 + timedelta(seconds=1),
        tier=tier,
    )


def _verdict(i: int, vid: str, key: str | None, minutes: int = 5) -> VerdictEventV1:
    return VerdictEventV1(
        verdict_id=vid,
        kind="verdict",
        study_id=f"s{i}",
        radiologist="ana",
        labels={label: 0 for label in LABELS},
        model_name="m",
        model_version="1",
        received_at=T0,
        scored_at=T0,
        decided_at=T0 + timedelta(minutes=minutes),
        idempotency_key=key,
    )


def test_reads_each_partition_to_its_end_offset_and_not_beyond() -> None:
    eof = KafkaError(KafkaError._PARTITION_EOF)
    ends = Ends(starts={("a", 0): 0, ("a", 1): 5}, ends={("a", 0): 2, ("a", 1): 7})
    consumer = FakeConsumer(
        [
            [Msg("a", 0, 0), Msg("a", 1, 5)],
            [],  # a quiet poll is not the end
            [Msg("a", 0, 1), Msg("a", 0, 2)],  # offset 2 came after the rebuild began
            [Msg("a", 1, 6)],
        ]
    )
    ticks: list[int] = []
    got = list(read_to_end(consumer, ends, on_message=lambda: ticks.append(1)))  # type: ignore[arg-type]
    assert [(m.topic(), m.partition(), m.offset()) for m in got] == [
        ("a", 0, 0),
        ("a", 1, 5),
        ("a", 0, 1),
        ("a", 1, 6),
    ]
    assert len(ticks) == 4 == ends.total
    assert {(tp.topic, tp.partition, tp.offset) for tp in consumer.assigned} == {("a", 0, 0), ("a", 1, 5)}

    # A partition whose last offsets are transaction markers ends at the EOF event past its end offset.
    marker_end = Ends(starts={("a", 0): 0}, ends={("a", 0): 3})
    consumer = FakeConsumer([[Msg("a", 0, 0)], [Msg("a", 0, 3, _error=eof)]])
    assert len(list(read_to_end(consumer, marker_end))) == 1  # type: ignore[arg-type]


def test_a_stalled_read_gives_up_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rebuild, "STALL_S", 0.0)
    consumer = FakeConsumer([])
    with pytest.raises(rebuild.RebuildError, match="no progress"):
        list(read_to_end(consumer, Ends(starts={("a", 0): 0}, ends={("a", 0): 1})))  # type: ignore[arg-type]


def test_fold_takes_the_last_prediction_dedupes_verdicts_and_counts_studies_awaiting_a_score() -> None:
    events = [
        Msg(topics.STUDIES, 0, 0, _study(1).to_bytes()),
        Msg(topics.STUDIES, 0, 1, _study(2).to_bytes()),
        Msg(topics.STUDIES, 0, 2, _study(3).to_bytes()),
        Msg(topics.PREDICTIONS, 0, 0, _prediction(1, 0.2).to_bytes()),
        Msg(topics.PREDICTIONS, 0, 1, _prediction(1, 0.9, Tier.CRITICAL).to_bytes()),
        Msg(topics.PREDICTIONS, 0, 2, _prediction(2, 0.4).to_bytes()),
        Msg(topics.VERDICTS, 0, 0, _verdict(2, "v" * 16, "k1").to_bytes()),
        Msg(topics.VERDICTS, 0, 1, _verdict(2, "v" * 16, "k1").to_bytes()),  # a retry's re-send
        Msg(topics.VERDICTS, 0, 2, _verdict(2, "w" * 16, None, minutes=9).to_bytes()),  # before keys
        Msg(topics.VERDICTS, 0, 3, b"not json"),
    ]
    projection = fold(iter(events))  # type: ignore[arg-type]
    assert projection.predictions["s1"].priority == 0.9 and projection.predictions["s1"].tier is Tier.CRITICAL
    assert [s.study_id for s, _ in projection.scored()] == ["s1", "s2"]
    assert set(projection.verdicts) == {"v" * 16, "w" * 16}
    assert projection.verdicts["w" * 16].idempotency_key == f"verdict:{'w' * 16}"
    assert projection.summary() == {
        "studies": 3,
        "predictions": 3,
        "verdicts": 3,
        "distinct_verdicts": 2,
        "unread": 1,
        "read": 1,
        "awaiting_score": 1,
        "skipped": 1,
    }
