"""Builders of test inputs: small PNG/JPEG images and DICOM files made with pydicom."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import numpy as np
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxr_triage.events import FeedbackEventV1
from cxr_triage.labels import LABELS

DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"
CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"


def _gray(seed: int, size: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)


def png_bytes(seed: int = 0, size: int = 128) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_gray(seed, size), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(seed: int = 0, size: int = 128) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_gray(seed, size), mode="L").save(buf, format="JPEG")
    return buf.getvalue()


def dicom_bytes(
    *,
    modality: str = "DX",
    study_uid: str | None = None,
    size: int = 96,
    photometric: str = "MONOCHROME2",
    pixels: np.ndarray | None = None,
) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_SOP_CLASS if modality in ("DX", "CR") else CT_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("test.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    data = pixels if pixels is not None else (_gray(1, size).astype(np.uint16) * 16)
    ds.Rows, ds.Columns = data.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = data.astype(np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def feedback_event(
    study_id: str = "s1",
    radiologist: str = "dr-a",
    *,
    verdict_id: str | None = None,
    abnormal: bool = True,
    priority: float = 0.7,
    model_version: str = "1",
    decided_at: datetime | None = None,
    kind: str = "verdict",
    threshold: float | None = 0.5,
) -> FeedbackEventV1:
    """A joined example: an abnormal one has Edema, a normal one No Finding (and the model's ``priority``)."""
    now = decided_at or datetime.now(UTC)
    labels = dict.fromkeys(LABELS, 0)
    labels["Edema" if abnormal else "No Finding"] = 1
    probabilities = dict.fromkeys(LABELS, 0.1)
    probabilities["No Finding"] = 1.0 - priority
    return FeedbackEventV1(
        study_id=study_id,
        radiologist=radiologist,
        verdict_id=verdict_id or f"v-{study_id}-{radiologist}-{now.timestamp():.6f}",
        kind=kind,  # type: ignore[arg-type]
        image_uri=f"file:///images/{'a' * 64}.png",
        sha256="a" * 64,
        content_type="image/png",
        source="test",
        labels=labels,  # type: ignore[arg-type]
        model_name="cxr_classifier",
        model_version=model_version,
        probabilities=probabilities,
        priority=priority,
        threshold=threshold,
        received_at=now - timedelta(minutes=10),
        scored_at=now - timedelta(minutes=9),
        decided_at=now,
    )
