"""A rebalance must not skip messages that the processors had fetched but not yet processed.

On a rebalance Faust clears the agents' buffers and then seeks every partition to its committed offset, so
that the cleared messages are read again. aiokafka's ``seek_to_committed`` only seeks a partition whose
committed offset is above 0: a partition with no commit yet (a new group, or a processor killed before its
first commit and restarted) keeps its fetch position, past the cleared messages, which are then skipped until
the next restart. Seen in the kill -9 test: a restarted processor rebalanced before its first commit and never
stored the feedback of four studies whose events it had already fetched.

Such a partition is sought to its beginning instead, where a group without a commit starts
(``consumer_auto_offset_reset="earliest"``): the cleared messages are read again, and the idempotent sinks
(the join's state, the feedback store) take them once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import faust

logger = logging.getLogger(__name__)


def rewind_uncommitted_on_seek(app: faust.App) -> None:
    """Make ``app``'s consumer seek partitions without a committed offset to their beginning when Faust seeks
    to the committed offsets (after every rebalance's recovery)."""
    consumer = cast(Any, app.consumer)  # the aiokafka driver's Consumer, which runs its client in a thread
    seek_to_committed: Callable[[], Awaitable[Mapping[Any, int | None]]] = consumer.seek_to_committed

    async def seek_to_committed_or_beginning() -> Mapping[Any, int | None]:
        committed = await seek_to_committed()
        # Changelog partitions are not committed: table recovery seeks them itself.
        uncommitted = [
            tp for tp, offset in committed.items() if not offset and not consumer._is_changelog_tp(tp)
        ]
        if uncommitted:
            await consumer._thread.seek_to_beginning(*uncommitted)
            logger.info(
                "partitions without a committed offset read from their beginning",
                extra={"partitions": len(uncommitted)},
            )
        return committed

    consumer.seek_to_committed = seek_to_committed_or_beginning
