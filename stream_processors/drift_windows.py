"""The drift monitor's two windows of inputs, without Kafka: the champion's reference and the newest inputs.

The reference is the first ``reference_size`` inputs scored by the serving version (kept once full, across
restarts: the processors persist this document in the feedback store's state); the current window is the
newest ``window_size`` inputs after it. A prediction from a newer version (a promotion) starts both afresh.
"""

from __future__ import annotations

import io
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from cxr_triage.events import ContentType


class DriftWindows(BaseModel):
    model_config = ConfigDict(frozen=True)

    model_version: str | None = None
    last_scored_at: datetime | None = None
    reference: tuple[dict[str, Any], ...] = ()
    reference_priorities: tuple[float, ...] = ()
    window: tuple[dict[str, Any], ...] = ()
    window_priorities: tuple[float, ...] = ()
    # Samples added since the last drift report: no new report when nothing changed.
    added_since_report: int = 0


def add_sample(
    windows: DriftWindows,
    *,
    sample: dict[str, Any],
    priority: float,
    model_version: str,
    scored_at: datetime,
    reference_size: int,
    window_size: int,
) -> DriftWindows:
    """``windows`` with one more (input summary, priority) of a study scored by ``model_version``."""
    if windows.model_version != model_version:
        if windows.last_scored_at is not None and scored_at < windows.last_scored_at:
            return windows  # a straggler of the version being replaced: not the serving model's input
        windows = DriftWindows(model_version=model_version)
    last = scored_at if windows.last_scored_at is None else max(scored_at, windows.last_scored_at)
    if len(windows.reference) < reference_size:
        return windows.model_copy(
            update={
                "last_scored_at": last,
                "reference": (*windows.reference, sample),
                "reference_priorities": (*windows.reference_priorities, priority),
            }
        )
    return windows.model_copy(
        update={
            "last_scored_at": last,
            "window": (*windows.window, sample)[-window_size:],
            "window_priorities": (*windows.window_priorities, priority)[-window_size:],
            "added_since_report": windows.added_since_report + 1,
        }
    )


def reported(windows: DriftWindows) -> DriftWindows:
    return windows.model_copy(update={"added_since_report": 0})


def view_of(data: bytes, content_type: ContentType) -> str:
    """The DICOM ViewPosition (PA, AP, LL...) of a DICOM image; "unknown" for PNG/JPEG or when absent."""
    if content_type != "application/dicom":
        return "unknown"
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError):
        return "unknown"
    view = str(ds.get("ViewPosition", "") or "").strip().upper()
    return view or "unknown"
