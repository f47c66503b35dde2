"""Decoding and preprocessing of chest radiographs: one definition for producer, worker and trainer."""

from __future__ import annotations

import io
import warnings
from typing import Final, Literal

import numpy as np
from PIL import Image

from cxr_triage.events import ContentType

# ImageNet statistics: the backbone's convention (DenseNet121 / ViT), applied to the grey value on 3 channels.
IMAGENET_MEAN: Final = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD: Final = np.array([0.229, 0.224, 0.225], dtype=np.float32)
MAX_PIXELS: Final[int] = 8192 * 8192
MIN_SIDE: Final[int] = 64
# 16-bit and float rasters: PIL's convert("L") clips them, so they are min-max scaled like DICOM pixels.
HIGH_DEPTH_MODES: Final[frozenset[str]] = frozenset({"I;16", "I;16B", "I;16L", "I", "F"})
RADIOGRAPH_MODALITIES: Final[frozenset[str]] = frozenset({"CR", "DX"})


RejectionKind = Literal["unsupported", "mismatch", "unreadable", "too_large"]


class ImageRejected(ValueError):
    """The bytes are not a chest radiograph we can read; ``reason`` says why in words a user can act on.

    ``kind`` sorts the reasons for a DICOM sender's status: a type we do not take (``unsupported``), a data
    set that contradicts its own SOP class (``mismatch``), pixels we cannot decode (``unreadable``), or an
    image over the size limits (``too_large``).
    """

    def __init__(self, reason: str, kind: RejectionKind = "unreadable") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


def sniff_content_type(data: bytes) -> ContentType:
    if not data:
        raise ImageRejected("empty file")
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if len(data) > 132 and data[128:132] == b"DICM":
        return "application/dicom"
    raise ImageRejected("not a PNG, JPEG or DICOM file (unrecognised signature)")


def _check_size(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise ImageRejected(f"image is {width}x{height}, over the {MAX_PIXELS}-pixel limit", "too_large")
    if min(width, height) < MIN_SIDE:
        raise ImageRejected(f"image is {width}x{height}, smaller than {MIN_SIDE} px on a side")


def _decode_raster(data: bytes) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                _check_size(*probe.size)
                probe.verify()
            with Image.open(io.BytesIO(data)) as img:
                img.load()  # a truncated file fails here, not later in the worker
                if img.mode in HIGH_DEPTH_MODES:
                    return _scale_to_uint8(np.asarray(img, dtype=np.float32))
                gray = img.convert("L")
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(f"decompression bomb guard: {exc}", "too_large") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(f"corrupt or truncated image: {exc}") from exc
    return np.asarray(gray, dtype=np.uint8)


def read_dicom(data: bytes, *, pixels: bool = True):  # type: ignore[no-untyped-def]
    """The pydicom data set of DICOM bytes (header only unless ``pixels``), or ``ImageRejected``."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=not pixels)
    except (InvalidDicomError, OSError, ValueError, KeyError, TypeError, EOFError) as exc:
        raise ImageRejected(f"unreadable DICOM: {exc}") from exc


def check_dicom_image(ds) -> None:  # type: ignore[no-untyped-def]
    """Refuse, before any decoding, what is not one greyscale radiograph of a size we take."""
    modality = str(ds.get("Modality", "") or "")
    if modality not in RADIOGRAPH_MODALITIES:
        raise ImageRejected(
            f"DICOM modality {modality or 'missing'!r} is not a radiograph (CR or DX)", "mismatch"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise ImageRejected(
            f"multi-frame DICOM ({frames} frames) is not taken: send each radiograph as its own instance",
            "unsupported",
        )
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise ImageRejected("DICOM must be a greyscale image (SamplesPerPixel 1)", "unsupported")
    try:
        columns, rows = int(ds.Columns), int(ds.Rows)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ImageRejected("DICOM has no image size (Rows / Columns)") from exc
    _check_size(columns, rows)


def _decode_dicom(data: bytes) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = read_dicom(data)
    check_dicom_image(ds)
    if "PixelData" not in ds:
        raise ImageRejected("DICOM has no pixel data")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    try:
        # Stored values -> modality values (rescale slope / intercept or a Modality LUT) -> the values the
        # sender meant to be seen (a VOI LUT, else the first window centre / width), as a viewer shows them.
        raw = ds.pixel_array
        pixels = np.asarray(apply_voi_lut(apply_modality_lut(raw, ds), ds, index=0), dtype=np.float32)
    except (ValueError, NotImplementedError, RuntimeError, AttributeError, TypeError, KeyError) as exc:
        name = getattr(syntax, "name", None) or str(syntax or "unknown transfer syntax")
        raise ImageRejected(f"DICOM pixel data cannot be decoded ({name}): {exc}") from exc
    if pixels.ndim != 2:
        raise ImageRejected(
            f"DICOM pixel data has shape {pixels.shape}, not one greyscale image", "unsupported"
        )
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        pixels = pixels.max() - pixels  # MONOCHROME1 stores bone dark; models expect bone bright
    return _scale_to_uint8(pixels)


def _scale_to_uint8(pixels: np.ndarray) -> np.ndarray:
    lo, hi = float(pixels.min()), float(pixels.max())
    if hi <= lo:
        raise ImageRejected("image is blank (all pixels equal)")
    # Rounded, not truncated: float error would otherwise never let the brightest pixel reach 255.
    return np.rint((pixels - lo) * (255.0 / (hi - lo))).clip(0, 255).astype(np.uint8)


def decode_grayscale(data: bytes, content_type: ContentType | None = None) -> np.ndarray:
    """Bytes of a PNG, JPEG or DICOM radiograph -> HxW uint8 greyscale, or ``ImageRejected``."""
    kind = content_type or sniff_content_type(data)
    if kind == "application/dicom":
        return _decode_dicom(data)
    return _decode_raster(data)


def resize_gray(gray: np.ndarray, size: int) -> np.ndarray:
    """HxW uint8 greyscale -> [1, size, size] uint8: what a served model takes (its graph normalises)."""
    resized = Image.fromarray(gray, mode="L").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)[None, :, :]


def normalise(pixels: np.ndarray) -> np.ndarray:
    """[..., 1, S, S] uint8 -> [..., 3, S, S] float32, ImageNet-normalised grey on three channels.

    The NumPy twin of the first layers of every exported graph (``cxr_triage.model.export.GrayscaleInput``):
    the trainer feeds its network this, the served graph computes it from the uint8 pixels it receives.
    """
    scaled = np.asarray(pixels, dtype=np.float32) / 255.0
    rgb = np.repeat(scaled, 3, axis=-3)
    shape = (3, 1, 1)
    return ((rgb - IMAGENET_MEAN.reshape(shape)) / IMAGENET_STD.reshape(shape)).astype(np.float32)


def preprocess(gray: np.ndarray, size: int) -> np.ndarray:
    """HxW uint8 greyscale -> 3 x size x size float32, ImageNet-normalised (the network's input in training)."""
    return normalise(resize_gray(gray, size))
