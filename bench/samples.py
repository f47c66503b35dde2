"""Images for the benchmarks: the public sample set when present, generated radiographs otherwise.

The producer deduplicates by content hash, so a run that needs more studies than there are images (or that
must not collide with an earlier run against the same stack) writes distinct copies to a scratch folder:
the same pixels, with a marker (a JPEG comment or a PNG text chunk) that changes the bytes. The images are
never copied into the repository.
"""

from __future__ import annotations

import csv
import logging
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from cxr_triage.imaging import decode_grayscale, resize_gray

logger = logging.getLogger(__name__)

DEFAULT_DATA_DIR: Final = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cxr-public"
_JPEG_SOI: Final = b"\xff\xd8"
_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    abnormal: int | None  # 1 abnormal, 0 normal, None unlabelled


def load_labelled(data_dir: Path) -> list[LabelledImage]:
    """The sample set's frontal images with their ``abnormal`` label (``labels.csv``), sorted by path."""
    labels_file = data_dir / "labels.csv"
    if not labels_file.is_file():
        return []
    images = []
    with labels_file.open(newline="") as fh:
        for row in csv.DictReader(fh):
            path = data_dir / row["Path"]
            if path.is_file():
                value = (row.get("abnormal") or "").strip()
                images.append(LabelledImage(path, int(float(value)) if value else None))
    return sorted(images, key=lambda image: image.path.name)


def source_images(data_dir: Path, scratch: Path, *, minimum: int = 16) -> list[Path]:
    """Real sample images if ``data_dir`` has them, else ``minimum`` generated ones written to ``scratch``."""
    real = sorted((data_dir / "images").glob("*.jpg")) if (data_dir / "images").is_dir() else []
    if real:
        return real
    from producers.sample_images import write_samples

    logger.warning("public sample set not found; using generated images", extra={"data_dir": str(data_dir)})
    return write_samples(scratch / "generated", n=minimum)


def mark(data: bytes, marker: str) -> bytes:
    """The same image with ``marker`` embedded as metadata: different bytes (and sha256), same pixels."""
    text = marker.encode("ascii")
    if data.startswith(_JPEG_SOI):
        return _JPEG_SOI + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + data[2:]
    if data.startswith(_PNG_SIGNATURE):
        body = b"tEXt" + b"cxr-bench\x00" + text
        chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
        ihdr_end = len(_PNG_SIGNATURE) + 8 + 13 + 4  # length, type, 13 data bytes, CRC
        return data[:ihdr_end] + chunk + data[ihdr_end:]
    raise ValueError("only JPEG and PNG images can be marked")


def distinct_copies(sources: Sequence[Path], n: int, folder: Path, *, nonce: str) -> list[Path]:
    """``n`` files with pairwise different content, cycling through ``sources``; ``nonce`` makes a run unique."""
    if not sources:
        raise ValueError("no source images")
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for index in range(n):
        source = sources[index % len(sources)]
        target = folder / f"study_{index:05d}{source.suffix.lower()}"
        target.write_bytes(mark(source.read_bytes(), f"{nonce}-{index}"))
        copies.append(target)
    return copies


def load_tensors(paths: Sequence[Path], input_size: int) -> np.ndarray:
    """[N, 1, S, S] uint8: the images resized as the worker does (the model's graph normalises them)."""
    return np.stack([resize_gray(decode_grayscale(path.read_bytes()), input_size) for path in paths])


def batch_of(tensors: np.ndarray, batch: int) -> np.ndarray:
    """A batch of ``batch`` rows taken cyclically from ``tensors`` (real images, repeated if needed)."""
    index = np.arange(batch) % len(tensors)
    return np.ascontiguousarray(tensors[index])
