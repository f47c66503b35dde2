"""Class activation maps as the viewer reads them: per map scaled to [0, 1], float16, C order, 14 x h x w.

The model returns raw maps (a map's spatial mean is that finding's logit, see ``cxr_triage.model.export``).
Scaling each map by its own minimum and maximum keeps where the model looked and drops how strongly, which
the probability already says; float16 then holds the [0, 1] values to ~1e-3 at half the bytes (1.4 kB per
study at 224 px). A model without maps returns zeros: no maps are stored for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxr_triage.labels import NUM_LABELS


@dataclass(frozen=True)
class CamMaps:
    data: bytes  # float16, C order, NUM_LABELS x height x width
    height: int
    width: int


def encode_cams(maps: np.ndarray) -> CamMaps | None:
    """One study's raw [14, h, w] maps -> stored form; None when the model produced no maps (all zero)."""
    if maps.ndim != 3 or maps.shape[0] != NUM_LABELS:
        raise ValueError(f"expected maps of shape [{NUM_LABELS}, h, w], got {list(maps.shape)}")
    values = np.nan_to_num(maps.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if not values.any():
        return None
    low = values.min(axis=(1, 2), keepdims=True)
    span = values.max(axis=(1, 2), keepdims=True) - low
    scaled = np.divide(values - low, span, out=np.zeros_like(values), where=span > 0)
    _, height, width = values.shape
    return CamMaps(np.ascontiguousarray(scaled, dtype=np.float16).tobytes(), height, width)
