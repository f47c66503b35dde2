"""PNG rendering of a study's image and of a class-activation-map overlay (pure functions, no I/O)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from cxr_triage.labels import NUM_LABELS

MAX_CAM_SIDE = 1024


class CamMalformed(ValueError):
    """The stored activation maps do not have the shape the study's record declares."""


def fit(gray: np.ndarray, max_side: int) -> Image.Image:
    image = Image.fromarray(gray, mode="L")
    scale = max_side / max(image.size)
    if scale < 1.0:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR)
    return image


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=3)
    return buf.getvalue()


def decode_cam(blob: bytes, *, height: int, width: int, index: int) -> np.ndarray:
    """One finding's map from a float16 ``14 x h x w`` blob, as float32."""
    if not (0 < height <= MAX_CAM_SIDE and 0 < width <= MAX_CAM_SIDE):
        raise CamMalformed(f"activation map size {height}x{width} is out of range")
    expected = NUM_LABELS * height * width * 2
    if len(blob) != expected:
        raise CamMalformed(
            f"activation maps hold {len(blob)} bytes, expected {expected} for 14x{height}x{width}"
        )
    maps = np.frombuffer(blob, dtype=np.float16).reshape(NUM_LABELS, height, width)
    return np.nan_to_num(maps[index].astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)


def _jet(x: np.ndarray) -> np.ndarray:
    """x in [0, 1] -> RGB in [0, 1]: blue, cyan, green, yellow, then full red at the top."""
    channels = [np.clip(1.5 - np.abs(4.0 * x - c), 0.0, 1.0) for c in (4.0, 2.5, 1.0)]
    return np.stack(channels, axis=-1)


def overlay(base: Image.Image, cam: np.ndarray, *, opacity: float = 0.5) -> Image.Image:
    """``base`` (greyscale) with ``cam`` upsampled onto it, coloured and blended by its own strength."""
    lo, hi = float(cam.min()), float(cam.max())
    norm = (cam - lo) / (hi - lo) if hi > lo else np.zeros_like(cam)
    heat = Image.fromarray(norm.astype(np.float32), mode="F").resize(base.size, Image.Resampling.BILINEAR)
    strength = np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0)
    grey = np.asarray(base.convert("L"), dtype=np.float32)[..., None] / 255.0
    alpha = (opacity * strength)[..., None]
    rgb = (1.0 - alpha) * grey + alpha * _jet(strength)
    return Image.fromarray((rgb * 255.0 + 0.5).astype(np.uint8), mode="RGB")
