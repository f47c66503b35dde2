"""Model output -> ``PredictionEventV1`` (probabilities by label, priority, the version that scored it) + maps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from pydantic import ValidationError

from cxr_triage.cams import CamMaps, encode_cams
from cxr_triage.events import PredictionEventV1
from cxr_triage.labels import LABELS
from cxr_triage.model.contract import TierThresholds
from cxr_triage.priority import priority
from inference_worker.batching import INVALID_OUTPUT, Prepared, Rejected, summarise
from inference_worker.triton_client import Scores


@dataclass(frozen=True)
class Scored:
    prepared: Prepared
    prediction: PredictionEventV1
    cams: CamMaps | None = None


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
