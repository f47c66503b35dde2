"""Builders of the events the stream processors consume: studies, predictions, verdicts, training results."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from cxr_triage.events import (
    PredictionEventV1,
    StudyEventV1,
    TrainingOutcome,
    TrainingResultEventV1,
    VerdictEventV1,
)
from cxr_triage.labels import LABELS, NO_FINDING

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def study(
    study_id: str, *, image_uri: str | None = None, data: bytes | None = None, source: str = "test"
) -> StudyEventV1:
    payload = data if data is not None else study_id.encode()
    return StudyEventV1(
        study_id=study_id,
        image_uri=image_uri or f"file:///nonexistent/{study_id}.png",
        sha256=hashlib.sha256(payload).hexdigest(),
        content_type="image/png",
        size_bytes=len(payload),
        received_at=T0,
        source=source,
    )


def prediction(
    study_id: str, *, priority: float = 0.7, version: str = "1", scored_at: datetime | None = None
) -> PredictionEventV1:
    probabilities = dict.fromkeys(LABELS, 0.1) | {"Pneumothorax": priority, NO_FINDING: 1.0 - priority}
    return PredictionEventV1(
        study_id=study_id,
        model_name="cxr_classifier",
        model_version=version,
        probabilities=probabilities,
        priority=priority,
        received_at=T0,
        scored_at=scored_at or T0 + timedelta(seconds=2),
        tier="urgent" if priority >= 0.5 else "routine",
        threshold=0.5,
    )


def verdict(
    study_id: str,
    *,
    radiologist: str = "dr-a",
    abnormal: bool = True,
    verdict_id: str | None = None,
    kind: str = "verdict",
    decided_at: datetime | None = None,
    version: str = "1",
) -> VerdictEventV1:
    labels = dict.fromkeys(LABELS, 0)
    if abnormal:
        labels["Pneumothorax"] = 1
    else:
        labels[NO_FINDING] = 1
    return VerdictEventV1(
        verdict_id=verdict_id or hashlib.sha256(f"{study_id}|{radiologist}|{kind}".encode()).hexdigest()[:32],
        kind=kind,
        study_id=study_id,
        radiologist=radiologist,
        labels=labels,
        uncertain=("Pneumothorax",) if abnormal else (),
        model_name="cxr_classifier",
        model_version=version,
        received_at=T0,
        scored_at=T0 + timedelta(seconds=2),
        claimed_at=T0 + timedelta(minutes=1),
        decided_at=decided_at or T0 + timedelta(minutes=2),
    )


def result(
    request_id: str, *, outcome: TrainingOutcome = "rejected", serving: str = "1", up_to_seq: int = 0
) -> TrainingResultEventV1:
    return TrainingResultEventV1(
        request_id=request_id,
        outcome=outcome,
        champion_version="1",
        challenger_version="2",
        serving_version=serving,
        up_to_seq=up_to_seq,
    )
