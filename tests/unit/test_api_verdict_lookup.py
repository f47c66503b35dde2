"""The search of cxr.verdicts.v1 for a pending verdict, with a stand-in consumer (no Kafka)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from cxr_triage import topics
from cxr_triage.events import VerdictEventV1
from cxr_triage.labels import LABELS
from priority_queue_api.verdict_lookup import LookupFailed, VerdictLookup

DECIDED = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def _verdict(verdict_id: str, radiologist: str = "ana") -> VerdictEventV1:
    return VerdictEventV1(
        verdict_id=f"{verdict_id:-<8}",
        kind="verdict",
        study_id="s1",
        radiologist=radiologist,
        labels={label: 0 for label in LABELS},
        model_name="cxr_classifier",
        model_version="1",
        received_at=DECIDED,
        scored_at=DECIDED,
        decided_at=DECIDED,
        idempotency_key="k1",
    )


@dataclass
class Msg:
    partition_: int
    offset_: int
    key_: bytes | None = None
    value_: bytes | None = None
    error_: KafkaError | None = None

    def error(self) -> KafkaError | None:
        return self.error_

    def key(self) -> bytes | None:
        return self.key_

    def value(self) -> bytes | None:
        return self.value_

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_


def _record(partition: int, offset: int, event: VerdictEventV1 | None, key: str | None = None) -> Msg:
    return Msg(
        partition,
        offset,
        (key or (event.key if event else "x")).encode(),
        event.to_bytes() if event else None,
    )


def _eof(partition: int, offset: int) -> Msg:
    return Msg(partition, offset, error_=KafkaError(KafkaError._PARTITION_EOF))


@dataclass
class StandIn:
    """Two partitions; ``starts`` answers offsets_for_times, ``ends`` the high watermarks."""

    starts: dict[int, int]
    ends: dict[int, int]
    polls: list[Msg | None]
    asked_since: list[int] = field(default_factory=list)
    assigned: list[int] = field(default_factory=list)
    closed: bool = False
    unreachable: bool = False

    def list_topics(self, topic: str, timeout: float) -> Any:
        if self.unreachable:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))
        meta = SimpleNamespace(error=None, partitions={p: None for p in self.ends})
        return SimpleNamespace(topics={topic: meta})

    def offsets_for_times(self, wanted: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        self.asked_since.extend(tp.offset for tp in wanted)
        return [TopicPartition(tp.topic, tp.partition, self.starts[tp.partition]) for tp in wanted]

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        return 0, self.ends[tp.partition]

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = [tp.partition for tp in partitions]

    def poll(self, timeout: float) -> Msg | None:
        return self.polls.pop(0) if self.polls else None

    def close(self) -> None:
        self.closed = True


@dataclass(frozen=True)
class Lookup(VerdictLookup):
    stand_in: StandIn | None = None

    def _consumer(self) -> Any:
        return self.stand_in


def _lookup(stand_in: StandIn, timeout_s: float = 5.0) -> Lookup:
    return Lookup("unused:1", timeout_s, stand_in=stand_in)


def test_found_among_others_of_the_same_key_and_other_keys() -> None:
    wanted, other = _verdict("wanted"), _verdict("an-older-one")
    stand_in = StandIn(
        starts={0: 3, 1: 7},
        ends={0: 5, 1: 9},
        polls=[
            _record(0, 3, _verdict("x", radiologist="bo")),
            _record(1, 7, other),  # the same Kafka key, another verdict
            _record(1, 8, None, key=wanted.key),  # a tombstone
            _record(0, 4, wanted),
        ],
    )
    assert asyncio.run(_lookup(stand_in).published(wanted)) is True
    assert stand_in.assigned == [0, 1] and stand_in.closed
    # From shortly before the verdict was decided, on every partition.
    assert stand_in.asked_since == [int((DECIDED.timestamp() - 300) * 1000)] * 2


def test_not_found_once_every_partition_is_read_to_its_end() -> None:
    wanted = _verdict("wanted")
    # Partition 1: nothing written since (-1); partition 2: its start is its end. Neither is read.
    stand_in = StandIn(
        starts={0: 0, 1: -1, 2: 4},
        ends={0: 2, 1: 6, 2: 4},
        polls=[None, _record(0, 0, _verdict("other")), _eof(0, 1)],
    )
    assert asyncio.run(_lookup(stand_in).published(wanted)) is False
    assert stand_in.assigned == [0] and stand_in.closed


def test_nothing_to_read_is_not_found_without_polling() -> None:
    stand_in = StandIn(starts={0: -1, 1: -1}, ends={0: 3, 1: 0}, polls=[])
    assert asyncio.run(_lookup(stand_in).published(_verdict("wanted"))) is False
    assert stand_in.assigned == []


def test_a_topic_not_read_to_its_end_in_time_fails_the_lookup() -> None:
    stand_in = StandIn(starts={0: 0}, ends={0: 5}, polls=[_record(0, 0, _verdict("other"))])
    with pytest.raises(LookupFailed, match="not read to its end"):
        asyncio.run(_lookup(stand_in, timeout_s=0.3).published(_verdict("wanted")))
    assert stand_in.closed


def test_an_unreachable_broker_fails_the_lookup() -> None:
    stand_in = StandIn(starts={0: 0}, ends={0: 1}, polls=[], unreachable=True)
    with pytest.raises(LookupFailed):
        asyncio.run(_lookup(stand_in).published(_verdict("wanted")))
    assert stand_in.closed


def test_the_lookup_reads_the_verdicts_topic() -> None:
    assert VerdictLookup("b:1", 1.0).topic == topics.VERDICTS
