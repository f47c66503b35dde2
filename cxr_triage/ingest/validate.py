"""Turn files on disk into validated studies ready to publish, or rejections with a reason."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cxr_triage.events import STUDY_ID_PATTERN, ContentType
from cxr_triage.imaging import ImageRejected, decode_grayscale, dicom_identity, sniff_content_type

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom"})
MAX_FILE_BYTES = 64 * 1024 * 1024
SUFFIX_FOR: dict[ContentType, str] = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "application/dicom": ".dcm",
}


@dataclass(frozen=True)
class PreparedStudy:
    path: Path
    study_id: str
    data: bytes
    sha256: str
    content_type: ContentType


@dataclass(frozen=True)
class Rejection:
    path: Path
    reason: str
    sha256: str | None = None


def iter_candidate_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files named explicitly are all tried; inside folders only image-like names (or no suffix, as DICOM)."""
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file() and not child.name.startswith(".") and _looks_like_image(child):
                    yield child
        else:
            yield path


def _looks_like_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES or path.suffix == ""


def study_id_for(data: bytes, content_type: ContentType, sha256: str) -> str:
    """DICOM studies keep their StudyInstanceUID, so PACS and worklist agree; anything else is its content hash."""
    if content_type == "application/dicom":
        uid = dicom_identity(data).study_instance_uid
        if uid and re.match(STUDY_ID_PATTERN, uid):
            return uid
    return sha256


def prepare(path: Path) -> PreparedStudy | Rejection:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return Rejection(path, f"file is {size} bytes, over the {MAX_FILE_BYTES}-byte limit")
        data = path.read_bytes()
    except OSError as exc:
        return Rejection(path, f"cannot read file: {exc.strerror or exc}")
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        content_type = sniff_content_type(data)
        decode_grayscale(data, content_type)  # reject here what the worker could not read later
        study_id = study_id_for(data, content_type, sha256)
    except ImageRejected as exc:
        return Rejection(path, exc.reason, sha256 if data else None)
    return PreparedStudy(path=path, study_id=study_id, data=data, sha256=sha256, content_type=content_type)
