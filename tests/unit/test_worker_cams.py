"""Activation maps in their stored form (cxr_triage.cams), as the API's heatmap endpoint decodes them."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_triage.cams import encode_cams
from cxr_triage.labels import NUM_LABELS


def test_each_map_is_scaled_to_0_1_in_float16_c_order() -> None:
    rng = np.random.default_rng(0)
    raw = rng.normal(3.0, 5.0, (NUM_LABELS, 4, 6)).astype(np.float32)
    encoded = encode_cams(raw)
    assert encoded is not None and (encoded.height, encoded.width) == (4, 6)
    assert len(encoded.data) == NUM_LABELS * 4 * 6 * 2
    maps = np.frombuffer(encoded.data, dtype=np.float16).reshape(NUM_LABELS, 4, 6).astype(np.float32)
    assert maps.min(axis=(1, 2)).tolist() == [0.0] * NUM_LABELS
    assert maps.max(axis=(1, 2)).tolist() == [1.0] * NUM_LABELS
    low = raw.min(axis=(1, 2), keepdims=True)
    expected = (raw - low) / (raw.max(axis=(1, 2), keepdims=True) - low)
    assert np.abs(maps - expected).max() <= 1e-3  # float16 keeps [0, 1] to about 1e-3
    assert np.argmax(maps[5]) == np.argmax(raw[5])  # where the model looked is kept


def test_all_zero_maps_mean_the_model_has_none() -> None:
    assert encode_cams(np.zeros((NUM_LABELS, 7, 7), dtype=np.float32)) is None


def test_flat_and_non_finite_maps_become_zero_not_nan() -> None:
    raw = np.ones((NUM_LABELS, 2, 2), dtype=np.float32)
    raw[0] = [[np.nan, 1.0], [np.inf, 2.0]]
    encoded = encode_cams(raw)
    assert encoded is not None
    maps = np.frombuffer(encoded.data, dtype=np.float16).reshape(NUM_LABELS, 2, 2)
    assert np.isfinite(maps).all()
    assert maps[1].tolist() == [[0.0, 0.0], [0.0, 0.0]]  # a constant map has no "where"
    assert maps[0].tolist() == [[0.0, 0.5], [0.0, 1.0]]


@pytest.mark.parametrize("shape", [(NUM_LABELS, 4), (13, 2, 2), (1, NUM_LABELS, 2, 2)])
def test_wrong_shapes_are_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="shape"):
        encode_cams(np.ones(shape, dtype=np.float32))
