"""DICOM chest radiographs for tests, made with pydicom from the public sample images (never copied here).

``chest_pixels`` reads one real sample image (or, without the sample set, a synthetic chest-like gradient)
as 12-bit values; ``radiograph`` wraps pixels into a DICOM instance with every header case the ingest
handles; ``encoded`` re-encodes an instance into a compressed transfer syntax (pydicom's encoders, Pillow for
JPEG baseline, dcmtk's ``dcmcjpls`` for JPEG-LS, which no Python encoder here provides).
"""

from __future__ import annotations

import io
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

PUBLIC = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cxr-public"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"

# Identifiers planted in every patient and study tag: none may appear past the ingest.
PLANTED = {
    "PatientName": "Zzplanted^Patientname",
    "PatientID": "PIDPLANTED4711",
    "PatientBirthDate": "19230817",
    "AccessionNumber": "ACCPLANTED0815",
    "InstitutionName": "Planted Institution Hospital",
    "ReferringPhysicianName": "Zzplanted^Referrer",
    "StudyID": "STUDYPLANTED9",
    "OtherPatientIDs": "OPIDPLANTED1",
}


def sample_images(count: int) -> list[Path]:
    images = sorted((PUBLIC / "images").glob("*.jpg"))
    return images[:count]


def chest_pixels(index: int = 0, size: int = 256, bits: int = 12) -> np.ndarray:
    """A real sample radiograph (bone bright) as ``bits``-bit unsigned values, ``size`` px square."""
    images = sample_images(index + 1)
    if len(images) > index:
        with Image.open(images[index]) as img:
            gray = np.asarray(img.convert("L").resize((size, size)), dtype=np.float64)
    else:  # no sample set: a bright mediastinum between darker lungs, with noise
        x = np.linspace(-1, 1, size)
        gray = 255 * np.exp(-(x[None, :] ** 2) * 6) * np.ones((size, 1))
        gray += np.random.default_rng(index).normal(0, 8, (size, size))
    gray = np.clip(gray, 0, 255)
    return np.round(gray * ((2**bits - 1) / 255.0)).astype(np.uint16)


def radiograph(
    pixels: np.ndarray | None = None,
    *,
    sop_class: str = DX_FOR_PRESENTATION,
    modality: str = "DX",
    study_uid: str | None = None,
    view: str = "PA",
    body_part: str = "CHEST",
    bits_stored: int = 12,
    photometric: str = "MONOCHROME2",
    identifiers: dict[str, str] | None = None,
    **tags: Any,
) -> Dataset:
    """A single-frame greyscale DICOM instance (Explicit VR Little Endian) with ``pixels`` as stored values."""
    data = chest_pixels(bits=bits_stored) if pixels is None else pixels
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("radiograph.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.ViewPosition = view
    ds.BodyPartExamined = body_part
    for keyword, value in (identifiers if identifiers is not None else PLANTED).items():
        setattr(ds, keyword, value)
    ds.Rows, ds.Columns = data.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16 if bits_stored > 8 else 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    dtype = np.uint16 if ds.BitsAllocated == 16 else np.uint8
    ds.PixelData = np.ascontiguousarray(data, dtype=dtype).tobytes()
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def encoded(ds: Dataset, syntax: UID) -> bytes:
    """``ds`` re-encoded into ``syntax`` (JPEG baseline 8-bit, JPEG-LS lossless, JPEG 2000 lossless, RLE)."""
    if syntax in (RLELossless, JPEG2000Lossless):
        ds.compress(syntax)
        return to_bytes(ds)
    if syntax == JPEGBaseline8Bit:
        eight = (ds.pixel_array.astype(np.float64) * (255.0 / (2**ds.BitsStored - 1))).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(eight, mode="L").save(buf, format="JPEG", quality=95)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.LossyImageCompression = "01"
        return to_bytes(ds)
    if syntax == JPEGLSLossless:
        with tempfile.TemporaryDirectory() as tmp:
            plain, packed = Path(tmp) / "plain.dcm", Path(tmp) / "packed.dcm"
            plain.write_bytes(to_bytes(ds))
            subprocess.run(["dcmcjpls", "--encode-lossless", str(plain), str(packed)], check=True)
            return packed.read_bytes()
    raise ValueError(f"no encoder here for {syntax.name}")


def syntax_of(data: bytes) -> UID:
    return UID(dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta.TransferSyntaxUID)
