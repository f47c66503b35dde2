"""Decoding and preprocessing of radiographs (cxr_triage.imaging), as the worker uses them."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cxr_triage.imaging import IMAGENET_MEAN, IMAGENET_STD, ImageRejected, decode_grayscale, preprocess
from tests.conftest import PUBLIC_DATA
from tests.factories import dicom_bytes

DATASET = PUBLIC_DATA / "images"


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def gradient(height: int = 96, width: int = 128) -> np.ndarray:
    return np.tile(np.linspace(0, 255, width, dtype=np.float32), (height, 1)).astype(np.uint8)


def test_preprocess_shape_dtype_and_normalisation() -> None:
    gray = np.zeros((100, 80), dtype=np.uint8)
    gray[:, 40:] = 255
    out = preprocess(gray, 64)
    assert out.shape == (3, 64, 64)
    assert out.dtype == np.float32
    black = -IMAGENET_MEAN / IMAGENET_STD
    white = (1 - IMAGENET_MEAN) / IMAGENET_STD
    assert np.allclose(out[:, :, 0], black[:, None], atol=1e-5)
    assert np.allclose(out[:, :, -1], white[:, None], atol=1e-5)
    # the grey value is copied to the three channels before each channel's own normalisation
    restored = out * IMAGENET_STD[:, None, None] + IMAGENET_MEAN[:, None, None]
    assert np.allclose(restored[0], restored[1], atol=1e-5) and np.allclose(
        restored[0], restored[2], atol=1e-5
    )
    assert restored.min() >= -1e-5 and restored.max() <= 1 + 1e-5


@pytest.mark.parametrize(
    ("mode", "fmt"), [("L", "PNG"), ("RGB", "PNG"), ("L", "JPEG"), ("RGB", "JPEG"), ("LA", "PNG")]
)
def test_png_and_jpeg_decode_to_grayscale(mode: str, fmt: str) -> None:
    img = Image.fromarray(gradient()).convert(mode)
    gray = decode_grayscale(encode(img, fmt))
    assert gray.shape == (96, 128)
    assert gray.dtype == np.uint8
    assert abs(int(gray[:, -1].mean()) - 255) <= 3 and int(gray[:, 0].mean()) <= 3


def test_real_radiograph_decodes() -> None:
    files = sorted(DATASET.glob("*.jpg"))[:3]
    if not files:
        pytest.skip(f"shared dataset not present at {DATASET}")
    for path in files:
        gray = decode_grayscale(path.read_bytes(), "image/jpeg")
        assert gray.shape == (320, 320)
        tensor = preprocess(gray, 224)
        assert tensor.shape == (3, 224, 224)
        assert np.isfinite(tensor).all()


def test_truncated_jpeg_is_rejected() -> None:
    data = encode(
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8)), "JPEG"
    )
    with pytest.raises(ImageRejected, match=r"truncated|corrupt"):
        decode_grayscale(data[: len(data) // 2])


def test_text_is_rejected() -> None:
    with pytest.raises(ImageRejected, match="signature"):
        decode_grayscale(b"patient: not an image\n" * 20)
    with pytest.raises(ImageRejected, match="empty"):
        decode_grayscale(b"")


def test_tiny_image_is_rejected() -> None:
    with pytest.raises(ImageRejected, match="smaller"):
        decode_grayscale(encode(Image.new("L", (32, 32)), "PNG"))


def test_ct_dicom_is_rejected() -> None:
    data = dicom_bytes(pixels=np.arange(64 * 64).reshape(64, 64) % 4096, modality="CT")
    with pytest.raises(ImageRejected, match="modality 'CT'"):
        decode_grayscale(data)


def test_dx_dicom_decodes_to_full_range() -> None:
    pixels = np.tile(np.linspace(0, 4095, 80), (64, 1))
    gray = decode_grayscale(dicom_bytes(pixels=pixels))
    assert gray.shape == (64, 80)
    assert gray.dtype == np.uint8
    assert gray[:, 0].max() == 0 and gray[:, -1].min() == 255
    assert np.all(np.diff(gray.astype(int), axis=1) >= 0)


def test_monochrome1_is_inverted() -> None:
    pixels = np.tile(np.linspace(0, 4095, 80), (64, 1))
    mono2 = decode_grayscale(dicom_bytes(pixels=pixels, photometric="MONOCHROME2"))
    mono1 = decode_grayscale(dicom_bytes(pixels=pixels, photometric="MONOCHROME1"))
    assert np.abs(mono1.astype(int) - (255 - mono2.astype(int))).max() <= 1


def test_blank_dicom_is_rejected() -> None:
    with pytest.raises(ImageRejected, match="blank"):
        decode_grayscale(dicom_bytes(pixels=np.full((64, 64), 100)))


def test_sixteen_bit_png_keeps_its_contrast() -> None:
    pixels = np.tile(np.linspace(0, 65535, 128), (96, 1)).astype(np.uint16)
    gray = decode_grayscale(encode(Image.fromarray(pixels), "PNG"))
    assert gray[:, 64].mean() == pytest.approx(128, abs=3)
