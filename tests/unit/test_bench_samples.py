"""Benchmark images: distinct copies for the producer's content-hash dedup, labels, batches."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from bench.samples import (
    batch_of,
    distinct_copies,
    load_labelled,
    load_tensors,
    mark,
    source_images,
)
from cxr_triage.imaging import decode_grayscale
from tests.factories import jpeg_bytes, png_bytes


@pytest.mark.parametrize("make", [jpeg_bytes, png_bytes])
def test_mark_changes_the_bytes_but_not_the_pixels(make: object) -> None:
    assert callable(make)
    data: bytes = make(seed=1)
    marked = mark(data, "run-1")
    assert hashlib.sha256(marked).digest() != hashlib.sha256(data).digest()
    assert mark(data, "run-1") == marked  # deterministic
    assert mark(data, "run-2") != marked
    np.testing.assert_array_equal(decode_grayscale(marked), decode_grayscale(data))


def test_mark_refuses_other_formats() -> None:
    with pytest.raises(ValueError):
        mark(b"DICM" * 40, "x")


def test_distinct_copies_cycle_through_the_sources(tmp_path: Path) -> None:
    sources = []
    for seed in range(3):
        path = tmp_path / f"src{seed}.jpg"
        path.write_bytes(jpeg_bytes(seed=seed))
        sources.append(path)
    copies = distinct_copies(sources, 7, tmp_path / "copies", nonce="abc")
    assert len(copies) == 7
    assert len({hashlib.sha256(path.read_bytes()).hexdigest() for path in copies}) == 7
    np.testing.assert_array_equal(
        decode_grayscale(copies[3].read_bytes()), decode_grayscale(sources[0].read_bytes())
    )
    assert all(path.parent == tmp_path / "copies" for path in copies)


def test_load_labelled_reads_the_abnormal_column(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    for name in ("b.jpg", "a.jpg", "c.jpg"):
        (tmp_path / "images" / name).write_bytes(jpeg_bytes())
    (tmp_path / "labels.csv").write_text(
        "Path,No Finding,abnormal\nimages/b.jpg,0,1\nimages/a.jpg,1,0\nimages/c.jpg,,\nimages/gone.jpg,1,0\n"
    )
    images = load_labelled(tmp_path)
    assert [(image.path.name, image.abnormal) for image in images] == [
        ("a.jpg", 0),
        ("b.jpg", 1),
        ("c.jpg", None),
    ]
    assert load_labelled(tmp_path / "missing") == []


def test_source_images_fall_back_to_generated_ones(tmp_path: Path) -> None:
    images = source_images(tmp_path / "no-data", tmp_path / "scratch", minimum=3)
    assert len(images) == 3 and all(path.is_file() for path in images)


def test_tensors_and_batches(tmp_path: Path) -> None:
    paths = []
    for seed in range(2):
        path = tmp_path / f"{seed}.png"
        path.write_bytes(png_bytes(seed=seed))
        paths.append(path)
    tensors = load_tensors(paths, 32)
    assert tensors.shape == (2, 1, 32, 32) and tensors.dtype == np.uint8  # what Triton receives
    batch = batch_of(tensors, 5)
    assert batch.shape == (5, 1, 32, 32) and batch.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(batch[2], tensors[0])
