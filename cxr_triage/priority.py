"""Worklist priority: how urgently a radiologist should read a study, from the model's 14 probabilities.

    priority = clip( max( 1 - p[No Finding],  max_i w_i * p_i ), 0, 1 )

where i runs over the findings (every label but "No Finding") and ``w_i`` is the finding's urgency weight:

    1.0  Pneumothorax, Edema, Consolidation, Pneumonia, Pleural Effusion, Enlarged Cardiomediastinum,
         Lung Lesion, Fracture   (acute or possibly acute: read first)
    0.8  Cardiomegaly, Lung Opacity, Atelectasis, Pleural Other
    0.2  Support Devices        (a line or tube is rarely urgent by itself)

The first term ranks "anything abnormal" when no single finding stands out; the second lets one confident
urgent finding lift a study to the top even when the model is unsure the image is abnormal overall. Higher is
read first (the Redis worklist is a sorted set scored by this value).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

import numpy as np

from cxr_triage.labels import LABELS, NO_FINDING, NUM_LABELS

DEFAULT_WEIGHTS: Final[Mapping[str, float]] = MappingProxyType(
    {
        "Pneumothorax": 1.0,
        "Edema": 1.0,
        "Consolidation": 1.0,
        "Pneumonia": 1.0,
        "Pleural Effusion": 1.0,
        "Enlarged Cardiomediastinum": 1.0,
        "Lung Lesion": 1.0,
        "Fracture": 1.0,
        "Cardiomegaly": 0.8,
        "Lung Opacity": 0.8,
        "Atelectasis": 0.8,
        "Pleural Other": 0.8,
        "Support Devices": 0.2,
    }
)
_NO_FINDING_INDEX: Final = LABELS.index(NO_FINDING)


def weight_vector(weights: Mapping[str, float] = DEFAULT_WEIGHTS) -> np.ndarray:
    """Weights in label order (0 for "No Finding" and for findings not named); rejects unknown labels."""
    unknown = sorted(set(weights) - set(LABELS))
    if unknown:
        raise ValueError(f"unknown labels in priority weights: {unknown}")
    if NO_FINDING in weights:
        raise ValueError(f"{NO_FINDING!r} enters the priority as 1 - p, it takes no weight")
    vector = np.array([float(weights.get(label, 0.0)) for label in LABELS], dtype=np.float64)
    if not np.all(np.isfinite(vector)) or np.any(vector < 0):
        raise ValueError("priority weights must be finite and non-negative")
    return vector


_DEFAULT_VECTOR: Final = weight_vector(DEFAULT_WEIGHTS)


def priorities(probabilities: np.ndarray, weights: Mapping[str, float] | None = None) -> np.ndarray:
    """Priorities of a batch: [N, 14] probabilities in label order -> [N] values in [0, 1]."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != NUM_LABELS:
        raise ValueError(f"expected probabilities of shape [N, {NUM_LABELS}], got {list(p.shape)}")
    if not np.all(np.isfinite(p)):
        raise ValueError("probabilities must be finite")
    w = _DEFAULT_VECTOR if weights is None else weight_vector(weights)
    abnormal = 1.0 - p[:, _NO_FINDING_INDEX]
    urgent = (p * w).max(axis=1)
    return np.clip(np.maximum(abnormal, urgent), 0.0, 1.0)


def priority(probabilities: np.ndarray, weights: Mapping[str, float] | None = None) -> float:
    """Priority of one study: [14] probabilities in label order -> a value in [0, 1]."""
    p = np.asarray(probabilities)
    if p.shape != (NUM_LABELS,):
        raise ValueError(f"expected probabilities of shape [{NUM_LABELS}], got {list(p.shape)}")
    return float(priorities(p[None, :], weights)[0])
