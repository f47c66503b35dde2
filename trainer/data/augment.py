"""Training-time augmentation of the greyscale image, before the shared ``preprocess``.

Only mild geometry and exposure changes: no horizontal flip, because laterality is anatomy on a chest film
(a flipped heart is dextrocardia). Evaluation and serving never augment, so they share ``preprocess`` alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps


@dataclass(frozen=True)
class AugmentConfig:
    max_rotation_deg: float = 7.0
    max_scale: float = 0.10
    max_translate: float = 0.05
    max_brightness: float = 0.10
    max_contrast: float = 0.10
    # A random crop keeping at least this share of the area (1.0: none), before the resize to the input size.
    crop_min_area: float = 1.0
    # Chance of histogram equalisation, blended in at a random strength: a CLAHE-like look on some films, so
    # a contrast-enhanced source (MHH's images are CLAHE-processed) is less of a tell.
    equalize_p: float = 0.0


def augment_grayscale(gray: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """HxW uint8 -> HxW uint8 with a random affine (rotation, scale, shift) and exposure change (and, when
    configured, a random crop and histogram equalisation)."""
    if config.crop_min_area < 1.0:
        gray = _random_crop(gray, rng, config.crop_min_area)
    if config.equalize_p > 0 and rng.uniform() < config.equalize_p:
        equalized = np.asarray(ImageOps.equalize(Image.fromarray(gray, mode="L")), dtype=np.float32)
        strength = rng.uniform(0.3, 1.0)
        gray = (strength * equalized + (1 - strength) * gray).astype(np.uint8)
    height, width = gray.shape
    angle = np.deg2rad(rng.uniform(-config.max_rotation_deg, config.max_rotation_deg))
    scale = 1.0 + rng.uniform(-config.max_scale, config.max_scale)
    tx, ty = rng.uniform(-config.max_translate, config.max_translate, size=2) * (width, height)
    # PIL's affine maps output to input coordinates: invert rotation+scale about the centre, then shift.
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    cx, cy = width / 2, height / 2
    coeffs = (cos, sin, cx - cos * cx - sin * cy - tx, -sin, cos, cy + sin * cx - cos * cy - ty)
    moved = Image.fromarray(gray, mode="L").transform(
        (width, height), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR, fillcolor=0
    )
    pixels = np.asarray(moved, dtype=np.float32)
    contrast = 1.0 + rng.uniform(-config.max_contrast, config.max_contrast)
    brightness = rng.uniform(-config.max_brightness, config.max_brightness) * 255.0
    pixels = (pixels - pixels.mean()) * contrast + pixels.mean() + brightness
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _random_crop(gray: np.ndarray, rng: np.random.Generator, min_area: float) -> np.ndarray:
    """A crop of a random share in [min_area, 1] of the area, aspect ratio kept, at a random place."""
    height, width = gray.shape
    side = np.sqrt(rng.uniform(min_area, 1.0))
    h, w = max(1, round(height * side)), max(1, round(width * side))
    top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
    return np.ascontiguousarray(gray[top : top + h, left : left + w])
