"""A scored study with several images, as the inference worker hands it to the worklist writer."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import numpy as np

from cxr_triage.cams import encode_cams
from cxr_triage.events import ImagePredictionV1, PredictionEventV1, StudyEventV1, StudyImageV1
from cxr_triage.labels import LABELS, NUM_LABELS
from cxr_triage.sla import SlaPolicy
from inference_worker.worklist import WorklistEntry

RECEIVED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
POLICY = SlaPolicy()


def image(
    image_id: str, view: str = "PA", uri: str | None = None, flags: tuple[str, ...] = ()
) -> StudyImageV1:
    sha = hashlib.sha256(image_id.encode()).hexdigest()
    return StudyImageV1.model_validate(
        {
            "image_id": image_id,
            "image_uri": uri or f"file:///images/{sha[:2]}/{sha[2:4]}/{sha}.dcm",
            "sha256": sha,
            "content_type": "application/dicom",
            "size_bytes": 10,
            "view": view,
            "flags": flags,
        }
    )


def maps_of(priority: float, corner: int = 0) -> np.ndarray:
    """Maps hot in one corner (0: top-left, 1: bottom-right), scaled by the image's priority."""
    maps = np.zeros((NUM_LABELS, 4, 4), dtype=np.float32)
    rows = slice(0, 2) if corner == 0 else slice(2, 4)
    maps[:, rows, rows] = 1.0 + priority
    return maps


def study_entry(
    study_id: str,
    readings: dict[str, float | None],
    *,
    views: dict[str, str] | None = None,
    version: str = "1",
    uris: dict[str, str] | None = None,
    corners: dict[str, int] | None = None,
    flags: dict[str, tuple[str, ...]] | None = None,
    received_at: datetime = RECEIVED,
) -> WorklistEntry:
    """A study event with these images, read as the worker reads them (``None``: a view the model does not
    read); the study's values are its most urgent image's, each read image has its own maps."""
    images = [
        image(i, (views or {}).get(i, "PA"), (uris or {}).get(i), (flags or {}).get(i, ())) for i in readings
    ]
    study = StudyEventV1.of_images(images, study_id=study_id, received_at=received_at)
    scored_at = received_at + timedelta(seconds=len(readings))
    read = {i: p for i, p in readings.items() if p is not None}
    most_urgent = max(read, key=lambda i: read[i])
    values = {
        i: {
            "model_version": version,
            "probabilities": {label: p for label in LABELS},
            "priority": p,
            "tier": POLICY.tier_for(p),
            "scored_at": scored_at,
        }
        for i, p in read.items()
    }
    prediction = PredictionEventV1(
        study_id=study_id,
        model_name="cxr_classifier",
        received_at=received_at,
        image_id=most_urgent,
        images=tuple(ImagePredictionV1(**im.model_dump(), **values.get(im.image_id, {})) for im in images),
        **values[most_urgent],  # type: ignore[arg-type]
    )
    cams = {i: encode_cams(maps_of(p, (corners or {}).get(i, 0))) for i, p in read.items()}
    kept = {i: c for i, c in cams.items() if c is not None}
    return WorklistEntry(study, prediction, kept.get(most_urgent), image_cams=kept)
