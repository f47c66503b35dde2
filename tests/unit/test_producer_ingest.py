"""The producer's checks: study ids (content hash, or a pseudonymised StudyInstanceUID), reasons, folders."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from cxr_triage.ingest.pseudonym import Pseudonymiser
from cxr_triage.ingest.validate import PreparedImage, Rejection, iter_candidate_files, prepare
from tests.factories import dicom_bytes, jpeg_bytes, png_bytes

PSEUDONYMS = Pseudonymiser(SecretStr("producer-ingest-test-key-0123456789"))


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def test_png_gets_its_content_hash_as_study_id_and_the_same_file_the_same_id(tmp_path: Path) -> None:
    first = prepare(_write(tmp_path, "a.png", png_bytes(1)), PSEUDONYMS)
    again = prepare(_write(tmp_path, "copy.png", png_bytes(1)), PSEUDONYMS)
    other = prepare(_write(tmp_path, "b.png", png_bytes(2)), PSEUDONYMS)
    assert isinstance(first, PreparedImage) and isinstance(again, PreparedImage)
    assert isinstance(other, PreparedImage)
    assert first.study_id == first.sha256 == again.study_id == first.image_id
    assert other.study_id != first.study_id
    assert first.content_type == "image/png"


def test_dicom_study_id_is_the_pseudonym_of_its_study_instance_uid(tmp_path: Path) -> None:
    uid = "1.2.826.0.1.3680043.8.498.1"
    outcome = prepare(_write(tmp_path, "x.dcm", dicom_bytes(study_uid=uid)), PSEUDONYMS)
    assert isinstance(outcome, PreparedImage)
    assert outcome.study_id == PSEUDONYMS.uid(uid) and uid not in outcome.study_id
    assert outcome.content_type == "application/dicom"


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("empty.jpg", b"", "empty file"),
        ("notes.txt", b"patient doing well\n" * 20, "not a PNG, JPEG or DICOM"),
        ("cut.jpg", jpeg_bytes(3)[:400], "corrupt or truncated"),
        ("ct.dcm", dicom_bytes(modality="CT"), "CT Image Storage is not a chest radiograph"),
        ("tiny.png", png_bytes(4, size=16), "smaller than"),
    ],
)
def test_bad_files_are_rejected_with_a_reason(tmp_path: Path, name: str, data: bytes, reason: str) -> None:
    outcome = prepare(_write(tmp_path, name, data), PSEUDONYMS)
    assert isinstance(outcome, Rejection)
    assert reason in outcome.reason


def test_folders_yield_image_like_files_only_and_named_files_always(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    _write(tmp_path, "a.jpg", b"")
    _write(tmp_path / "sub", "b.PNG", b"")
    _write(tmp_path / "sub", "IM0001", b"")
    _write(tmp_path, "labels.csv", b"")
    _write(tmp_path, ".hidden.png", b"")
    notes = _write(tmp_path, "notes.txt", b"")
    found = {p.name for p in iter_candidate_files([tmp_path, notes])}
    assert found == {"a.jpg", "b.PNG", "IM0001", "notes.txt"}
