"""Turn files and bytes into checked, pseudonymised images ready to publish, or rejections with a reason."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cxr_triage.events import ContentType, StudyImageV1, StudyPseudonyms, View
from cxr_triage.imaging import ImageRejected, decode_grayscale, sniff_content_type
from cxr_triage.ingest.dicom_header import read_instance
from cxr_triage.ingest.pseudonym import Pseudonymiser

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom"})
MAX_FILE_BYTES = 64 * 1024 * 1024
SUFFIX_FOR: dict[ContentType, str] = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "application/dicom": ".dcm",
}


@dataclass(frozen=True)
class Rejection:
    path: Path
    reason: str
    sha256: str | None = None


def iter_candidate_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files named explicitly are all tried; inside folders only image-like names (``images_in``)."""
    for path in paths:
        if path.is_dir():
            yield from images_in(path)
        else:
            yield path


def images_in(folder: Path) -> Iterator[Path]:
    """The files under ``folder`` named like images (or with no suffix, as DICOM exports are), in name order;
    hidden files are skipped."""
    for path in sorted(folder.rglob("*")):
        if path.name.startswith(".") or path.suffix.lower() not in (*IMAGE_SUFFIXES, ""):
            continue
        if path.is_file():
            yield path


def read_capped(path: Path) -> bytes:
    """The file's bytes; ``ImageRejected`` (too large) before reading one over ``MAX_FILE_BYTES``."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ImageRejected(f"file is {size} bytes, over the {MAX_FILE_BYTES}-byte limit", "too_large")
    return path.read_bytes()


def prepare(path: Path, pseudonyms: Pseudonymiser) -> PreparedImage | Rejection:
    """One file, checked and named (``prepare_bytes``), or the reason it is refused."""
    try:
        data = read_capped(path)
    except ImageRejected as exc:
        return Rejection(path, exc.reason)
    except OSError as exc:
        return Rejection(path, f"cannot read file: {exc.strerror or type(exc).__name__}")
    try:
        return prepare_bytes(data, pseudonyms)
    except ImageRejected as exc:
        return Rejection(path, exc.reason, sha256_of(data) if data else None)


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class PreparedImage:
    """One checked image, ready to store and publish: pseudonyms, view and flags, never an identifier."""

    data: bytes
    sha256: str
    content_type: ContentType
    study_id: str
    image_id: str
    view: View = "UNKNOWN"
    flags: tuple[str, ...] = ()
    pseudonyms: StudyPseudonyms = field(default_factory=StudyPseudonyms)

    def image(self, uri: str) -> StudyImageV1:
        """The image as events carry it, once the store keeps it at ``uri``."""
        return StudyImageV1(
            image_id=self.image_id,
            image_uri=uri,
            sha256=self.sha256,
            content_type=self.content_type,
            size_bytes=len(self.data),
            view=self.view,
            flags=self.flags,
        )


def prepare_bytes(data: bytes, pseudonyms: Pseudonymiser) -> PreparedImage:
    """Check one image and name it: a DICOM instance by its pseudonymised UIDs, anything else by its hash."""
    if len(data) > MAX_FILE_BYTES:
        raise ImageRejected(f"file is {len(data)} bytes, over the {MAX_FILE_BYTES}-byte limit", "too_large")
    sha256 = sha256_of(data)
    content_type = sniff_content_type(data)
    if content_type != "application/dicom":
        decode_grayscale(data, content_type)
        return PreparedImage(data, sha256, content_type, study_id=sha256, image_id=sha256)
    instance = read_instance(data, pseudonyms)  # header first: a refused SOP class is never decoded
    decode_grayscale(data, content_type)  # refuse here what the worker could not read later
    return PreparedImage(
        data,
        sha256,
        content_type,
        study_id=instance.study_id,
        image_id=instance.instance_id,
        view=instance.view,
        flags=instance.flags,
        pseudonyms=instance.pseudonyms,
    )
