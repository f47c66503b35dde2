"""``stream_processors.rewind``: after Faust's seek to the committed offsets, partitions with nothing committed
(None or 0) are sought to their beginning; committed ones and changelog partitions are left where they are."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import faust

from stream_processors.rewind import rewind_uncommitted_on_seek


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
