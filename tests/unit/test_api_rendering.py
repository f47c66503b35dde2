"""PNG rendering of images and activation-map overlays (priority_queue_api.rendering)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cxr_triage.labels import LABELS
from priority_queue_api.rendering import CamMalformed, decode_cam, fit, overlay


def test_fit_only_shrinks_and_keeps_the_aspect() -> None:
    gray = np.zeros((400, 200), dtype=np.uint8)
    assert fit(gray, 100).size == (50, 100)
    assert fit(gray, 1000).size == (200, 400)


def test_decode_cam_checks_the_declared_shape() -> None:
    maps = np.arange(len(LABELS) * 4 * 5, dtype=np.float16).reshape(len(LABELS), 4, 5)
    cam = decode_cam(maps.tobytes(), height=4, width=5, index=3)
    assert cam.dtype == np.float32 and np.array_equal(cam, maps[3].astype(np.float32))
    with pytest.raises(CamMalformed, match="expected"):
        decode_cam(maps.tobytes()[:-2], height=4, width=5, index=3)
    with pytest.raises(CamMalformed, match="out of range"):
        decode_cam(b"", height=0, width=5, index=0)


def test_overlay_is_hot_where_the_map_is_and_grey_elsewhere() -> None:
    base = Image.fromarray(np.full((100, 100), 128, dtype=np.uint8), mode="L")
    cam = np.zeros((10, 10), dtype=np.float32)
    cam[7:, 7:] = np.nan  # non-finite values in a stored map must not poison the picture
    cam[:3, :3] = 1.0
    rgb = np.asarray(overlay(base, np.nan_to_num(cam)), dtype=np.int16)
    assert rgb.shape == (100, 100, 3)
    assert rgb[5, 5, 0] > 180 and rgb[5, 5, 2] < 100
    assert (rgb[90, 90] == 128).all()
    flat = np.asarray(overlay(base, np.zeros((4, 4), dtype=np.float32)))
    assert (flat == 128).all()
