"""The processors must not skip messages that they had fetched but not yet processed.

Two holes in faust-streaming 0.15 / aiokafka 0.14, both seen or reasoned from the kill -9 test:

1. **The queue clear at the end of recovery** (upstream faust-streaming/faust#596). When table recovery
   completes, Faust resumes the stream partitions, awaits a seek of every partition to its committed offset and
   only then resumes its flow control, which *clears every agent's queue*. Agents are already running by then
   (the flow was resumed during the changelog read), so whatever was fetched during that seek is dropped, never
   acked, and never fetched again: the fetch position is past it. A restarted processor's sink lost 127
   feedback events this way (offsets 9..78 and 9..65 of its two partitions), and its commits stuck at 9.
   ``reread_after_recovery`` seeks to the committed offsets once more after that clear, with the flow stopped:
   what was dropped is read again.
2. **Partitions with nothing committed.** aiokafka's ``seek_to_committed`` only seeks a partition whose
   committed offset is above 0, so one with no commit yet (a new group, a processor killed before its first
   commit) keeps its fetch position. ``rewind_uncommitted_on_seek`` seeks those to their beginning, where a
   group without a commit starts (``consumer_auto_offset_reset="earliest"``).

The messages read twice are harmless: every sink is idempotent (the join's state, the feedback store).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import faust

logger = logging.getLogger(__name__)


def rewind_uncommitted_on_seek(app: faust.App) -> None:
    """Make ``app``'s consumer seek partitions without a committed offset to their beginning when Faust seeks
    to the committed offsets."""
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


def reread_after_recovery(app: faust.App) -> None:
    """After each completed recovery (every start and rebalance), seek once more to the committed offsets with
    the flow stopped, so that what Faust's closing queue clear dropped is fetched again."""
    recovery = cast(Any, app.tables).recovery  # TableManager's, not on its abstract type
    consumer = cast(Any, app.consumer)
    on_recovery_completed: Callable[[int], Awaitable[None]] = recovery.on_recovery_completed

    async def on_recovery_completed_then_reread(generation_id: int = 0) -> None:
        await on_recovery_completed(generation_id)
        if app.consumer_generation_id != generation_id or not consumer.assignment():
            return  # a newer rebalance is under way: its own recovery ends with this again
        consumer.stop_flow()
        try:
            await consumer.wait_for_stopped_flow()
            await consumer.perform_seek()
        finally:
            consumer.resume_flow()
        logger.info("stream partitions read again from their committed offsets after recovery")

    recovery.on_recovery_completed = on_recovery_completed_then_reread


def guard_against_skips(app: faust.App) -> None:
    rewind_uncommitted_on_seek(app)
    reread_after_recovery(app)
