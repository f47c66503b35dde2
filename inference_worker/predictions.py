"""Model output -> ``PredictionEventV1`` (probabilities by label, priority, the version that scored it) + maps.

The model reads images; the worklist orders studies. ``build_predictions`` gives one reading per image and
``study_readings`` joins the readings of one study event into the study's prediction: the most urgent image's
values at the top level, every image of the study (read or not) in ``images``, each image's maps beside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from pydantic import ValidationError

from cxr_triage.cams import CamMaps, encode_cams
from cxr_triage.events import ImagePredictionV1, PredictionEventV1
from cxr_triage.labels import LABELS
from cxr_triage.model.contract import TierThresholds
from cxr_triage.priority import priority
from inference_worker.batching import INVALID_OUTPUT, Prepared, Rejected, summarise
from inference_worker.triton_client import Scores


@dataclass(frozen=True)
class Scored:
    prepared: Prepared  # for a study: its most urgent image's
    prediction: PredictionEventV1
    cams: CamMaps | None = None  # for a study: its most urgent image's maps
    image_cams: Mapping[str, CamMaps] = field(default_factory=dict)  # every read image's maps, by image id


@dataclass
class ScoredBatch:
    scored: list[Scored] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def build_predictions(
    prepared: list[Prepared],
    scores: Scores,
    *,
    model_name: str,
    scored_at: datetime,
    tiers: TierThresholds,
    threshold: float | None = None,
    weights: Mapping[str, float] | None = None,
) -> ScoredBatch:
    """One prediction per prepared study, filed into a tier by ``tiers`` (the scoring model's thresholds).

    A row the model got wrong (NaN, out of range) is rejected alone.
    """
    batch = ScoredBatch()
    maps = [None] * len(prepared) if scores.cams is None else list(scores.cams)
    for item, row, version, raw in zip(
        prepared, scores.probabilities, scores.model_versions, maps, strict=True
    ):
        try:
            value = priority(np.asarray(row), weights)
            prediction = PredictionEventV1(
                study_id=item.study.study_id,
                model_name=model_name,
                model_version=version,
                probabilities={label: float(p) for label, p in zip(LABELS, row, strict=True)},
                priority=value,
                received_at=item.study.received_at,
                scored_at=scored_at,
                tier=tiers.tier_for(value),
                threshold=threshold,
                image_id=item.which.image_id,
            )
            cams = None if raw is None else encode_cams(raw)
        except (ValidationError, ValueError) as exc:
            detail = summarise(exc) if isinstance(exc, ValidationError) else str(exc)
            batch.rejected.append(
                Rejected(
                    item.record,
                    INVALID_OUTPUT,
                    f"model output cannot be a prediction: {detail}",
                    type(exc).__name__,
                    study_id=item.study.study_id,
                    sha256=item.study.sha256,
                )
            )
            continue
        batch.scored.append(Scored(item, prediction, cams))
    return batch


def record_key(prepared: Prepared) -> tuple[str, int, int]:
    """Which Kafka record an image came from: the images of one study event are joined by it."""
    return (prepared.record.topic, prepared.record.partition, prepared.record.offset)


def study_readings(readings: list[Scored]) -> list[Scored]:
    """One study prediction per study event, from its images' readings (in the order the events came)."""
    groups: dict[tuple[str, int, int], list[Scored]] = {}
    for reading in readings:
        groups.setdefault(record_key(reading.prepared), []).append(reading)
    return [_study_reading(group) for group in groups.values()]


def _study_reading(group: list[Scored]) -> Scored:
    most_urgent = max(group, key=lambda reading: reading.prediction.priority)  # the first among equals
    study = most_urgent.prepared.study
    by_image = {reading.prepared.which.image_id: reading.prediction for reading in group}
    images = tuple(
        ImagePredictionV1(
            **image.model_dump(),
            **(
                {}
                if (read := by_image.get(image.image_id)) is None
                else {
                    "model_version": read.model_version,
                    "probabilities": read.probabilities,
                    "priority": read.priority,
                    "tier": read.tier,
                    "scored_at": read.scored_at,
                }
            ),
        )
        for image in study.all_images
    )
    return Scored(
        most_urgent.prepared,
        most_urgent.prediction.model_copy(update={"images": images}),
        most_urgent.cams,
        {r.prepared.which.image_id: r.cams for r in group if r.cams is not None},
    )
