"""Synthetic chest-radiograph-like images, for machines without the public sample set.

They exercise every code path (decode, resize, score, rank) but carry no clinical signal: a model's scores on
them mean nothing. ``python -m producers.sample_images DIR [--n N]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def synthetic_radiograph(rng: np.random.Generator, size: int = 320) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    body = np.exp(-(((x - 0.5) / 0.42) ** 4) - (((y - 0.55) / 0.5) ** 4))
    lungs = np.zeros_like(x)
    for cx in (0.32, 0.68):
        lungs += np.exp(-(((x - cx) / 0.13) ** 2) - (((y - 0.5) / 0.28) ** 2))
    image = 0.75 * body - 0.45 * lungs
    if rng.random() < 0.5:  # an opacity in one lung, so images differ in a way a model could learn
        cx, cy = rng.choice([0.32, 0.68]), rng.uniform(0.4, 0.7)
        image += 0.35 * np.exp(-(((x - cx) / 0.06) ** 2) - (((y - cy) / 0.06) ** 2))
    image += rng.normal(0.0, 0.03, size=image.shape)
    pixels = np.clip((image - image.min()) / (np.ptp(image) + 1e-6) * 255.0, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="L")


def write_samples(folder: Path, *, n: int, seed: int = 20240601) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"synthetic_{i:04d}.png"
        synthetic_radiograph(rng).save(path)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--n", type=int, default=20)
    args = parser.parse_args()
    write_samples(args.folder, n=args.n)


if __name__ == "__main__":
    main()
