"""``stream_processors.rewind``: after Faust's seek to the committed offsets, partitions with nothing committed
(None or 0) are sought to their beginning, committed ones and changelog partitions are left where they are; and
after each completed recovery the committed offsets are sought once more, with the flow stopped."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import faust

from stream_processors.rewind import reread_after_recovery, rewind_uncommitted_on_seek


@dataclass
class FakeThread:
    rewound: list[tuple[str, int]] = field(default_factory=list)

    async def seek_to_beginning(self, *partitions: tuple[str, int]) -> None:
        self.rewound.extend(partitions)


@dataclass
class FakeConsumer:
    committed: Mapping[tuple[str, int], int | None]
    _thread: FakeThread = field(default_factory=FakeThread)

    async def seek_to_committed(self) -> Mapping[tuple[str, int], int | None]:
        return self.committed

    def _is_changelog_tp(self, tp: tuple[str, int]) -> bool:
        return tp[0].endswith("-changelog")


@dataclass
class FakeApp:
    consumer: FakeConsumer


def test_uncommitted_stream_partitions_are_read_from_their_beginning() -> None:
    committed = {
        ("cxr.feedback.v1", 0): None,  # nothing committed yet
        ("cxr.feedback.v1", 1): 0,  # committed at the start: aiokafka does not seek 0 either
        ("cxr.studies.v1", 0): 41,  # committed: aiokafka's own seek stands
        ("app-join-changelog", 0): None,  # recovery seeks changelogs itself
    }
    app = FakeApp(FakeConsumer(committed))
    rewind_uncommitted_on_seek(cast(faust.App, app))
    returned: Any = asyncio.run(app.consumer.seek_to_committed())
    assert returned == committed  # Faust's perform_seek still sees what was committed
    assert app.consumer._thread.rewound == [("cxr.feedback.v1", 0), ("cxr.feedback.v1", 1)]


def test_nothing_is_rewound_when_every_partition_has_a_commit() -> None:
    app = FakeApp(FakeConsumer({("cxr.feedback.v1", 0): 7, ("cxr.verdicts.v1", 1): 3}))
    rewind_uncommitted_on_seek(cast(faust.App, app))
    asyncio.run(app.consumer.seek_to_committed())
    assert app.consumer._thread.rewound == []


@dataclass
class FakeRecovery:
    calls: list[str]

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        self.calls.append(f"recovered {generation_id}")


@dataclass
class FlowConsumer:
    calls: list[str]
    assigned: bool = True

    async def seek_to_committed(self) -> Mapping[tuple[str, int], int | None]:
        return {}

    def assignment(self) -> set[tuple[str, int]]:
        return {("cxr.feedback.v1", 0)} if self.assigned else set()

    def stop_flow(self) -> None:
        self.calls.append("stop_flow")

    async def wait_for_stopped_flow(self) -> None:
        self.calls.append("wait_for_stopped_flow")

    async def perform_seek(self) -> None:
        self.calls.append("perform_seek")

    def resume_flow(self) -> None:
        self.calls.append("resume_flow")


@dataclass
class RecoveringApp:
    consumer: FlowConsumer
    tables: Any
    consumer_generation_id: int = 3


def test_after_recovery_the_committed_offsets_are_sought_again_with_the_flow_stopped() -> None:
    calls: list[str] = []
    app = RecoveringApp(FlowConsumer(calls), tables=type("Tables", (), {"recovery": FakeRecovery(calls)})())
    reread_after_recovery(cast(faust.App, app))
    asyncio.run(app.tables.recovery.on_recovery_completed(3))
    # Faust's own completion (which ends by clearing the agents' queues) first, then the seek that reads
    # again whatever that clear dropped.
    assert calls == ["recovered 3", "stop_flow", "wait_for_stopped_flow", "perform_seek", "resume_flow"]


def test_no_second_seek_when_another_rebalance_began() -> None:
    calls: list[str] = []
    app = RecoveringApp(FlowConsumer(calls), tables=type("Tables", (), {"recovery": FakeRecovery(calls)})())
    reread_after_recovery(cast(faust.App, app))
    asyncio.run(app.tables.recovery.on_recovery_completed(2))  # generation 2 is over: the app is at 3
    assert calls == ["recovered 2"]
