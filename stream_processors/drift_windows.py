"""The drift monitor's two windows of inputs, without Kafka: the champion's reference and the newest inputs.

The reference is the first ``reference_size`` inputs scored by the serving version (kept once full, across
restarts: the processors persist this document in the feedback store's state); the current window is the
newest ``window_size`` inputs after it. A prediction from a newer version (a promotion) starts both afresh.

Each sample is kept with its study id, so a study seen again (a replay after a crash: the windows are saved
on drift ticks, the join's offsets committed in between) adds nothing. The ids are pseudonymous hashes and
live only in this state document, never in a log line, a metric or a drift report.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class DriftWindows(BaseModel):
    model_config = ConfigDict(frozen=True)

    model_version: str | None = None
    last_scored_at: datetime | None = None
    reference: tuple[dict[str, Any], ...] = ()
    reference_priorities: tuple[float, ...] = ()
    window: tuple[dict[str, Any], ...] = ()
    window_priorities: tuple[float, ...] = ()
    # The study of each sample, index for index (empty in a document saved before ids were kept).
    reference_ids: tuple[str, ...] = ()
    window_ids: tuple[str, ...] = ()
    # Samples added since the last drift report: no new report when nothing changed.
    added_since_report: int = 0


def add_sample(
    windows: DriftWindows,
    *,
    study_id: str,
    sample: dict[str, Any],
    priority: float,
    model_version: str,
    scored_at: datetime,
    reference_size: int,
    window_size: int,
) -> DriftWindows:
    """``windows`` with one more (input summary, priority) of a study scored by ``model_version``.

    A study already in either window (a replay) changes nothing.
    """
    if windows.model_version != model_version:
        if windows.last_scored_at is not None and scored_at < windows.last_scored_at:
            return windows  # a straggler of the version being replaced: not the serving model's input
        windows = DriftWindows(model_version=model_version)
    elif study_id in windows.reference_ids or study_id in windows.window_ids:
        return windows
    last = scored_at if windows.last_scored_at is None else max(scored_at, windows.last_scored_at)
    if len(windows.reference) < reference_size:
        return windows.model_copy(
            update={
                "last_scored_at": last,
                "reference": (*windows.reference, sample),
                "reference_priorities": (*windows.reference_priorities, priority),
                "reference_ids": (*windows.reference_ids, study_id),
            }
        )
    return windows.model_copy(
        update={
            "last_scored_at": last,
            "window": (*windows.window, sample)[-window_size:],
            "window_priorities": (*windows.window_priorities, priority)[-window_size:],
            "window_ids": (*windows.window_ids, study_id)[-window_size:],
            "added_since_report": windows.added_since_report + 1,
        }
    )


def reported(windows: DriftWindows) -> DriftWindows:
    return windows.model_copy(update={"added_since_report": 0})
