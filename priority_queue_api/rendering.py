"""PNG rendering of a study's image, of a class-activation-map overlay blended over it, and of the map alone
as a transparent layer (pure functions, no I/O)."""

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


def _normalised(cam: np.ndarray) -> np.ndarray:
    lo, hi = float(cam.min()), float(cam.max())
    return (cam - lo) / (hi - lo) if hi > lo else np.zeros_like(cam)


def _strength(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The map normalised to [0, 1] and upsampled (bilinear) to ``size`` (width, height)."""
    heat = Image.fromarray(_normalised(cam).astype(np.float32), mode="F").resize(
        size, Image.Resampling.BILINEAR
    )
    return np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0)


def cam_layer(cam: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """``cam`` alone as an RGBA layer of ``size`` (width, height): coloured like ``overlay``, its alpha the map's
    own strength, so the page can lay it over the image it shows and choose the opacity itself.

    Coloured in bands of rows: a full-resolution radiograph is tens of millions of pixels, and a float copy per
    channel of all of them at once would cost gigabytes."""
    strength = _strength(cam, size)
    rgba = np.empty((*strength.shape, 4), dtype=np.uint8)
    for top in range(0, strength.shape[0], _BAND):
        band = strength[top : top + _BAND]
        rgba[top : top + _BAND, :, :3] = _to_uint8(_jet(band))
        rgba[top : top + _BAND, :, 3] = _to_uint8(band)
    return Image.fromarray(rgba, mode="RGBA")


_BAND = 256


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return (x * 255.0 + 0.5).astype(np.uint8)


def overlay(base: Image.Image, cam: np.ndarray, *, opacity: float = 0.5) -> Image.Image:
    """``base`` (greyscale) with ``cam`` upsampled onto it, coloured and blended by its own strength."""
    strength = _strength(cam, base.size)
    grey = np.asarray(base.convert("L"), dtype=np.float32)[..., None] / 255.0
    alpha = (opacity * strength)[..., None]
    rgb = (1.0 - alpha) * grey + alpha * _jet(strength)
    return Image.fromarray((rgb * 255.0 + 0.5).astype(np.uint8), mode="RGB")
