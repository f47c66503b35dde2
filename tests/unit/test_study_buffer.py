"""The study buffer: complete after a quiet time or a closed association, late images, resends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from cxr_triage.events import StudyImageV1, StudyPseudonyms
from producers.study_buffer import StudyBuffer

T0 = datetime(2026, 12, 2, 8, tzinfo=UTC)


def _image(n: int, view: str = "PA") -> StudyImageV1:
    return StudyImageV1(
        image_id=f"2.25.{n}", image_uri=f"file:/s/{n}.dcm", sha256=f"{n:064x}",
        content_type="application/dicom", size_bytes=10, view=view,  # type: ignore[arg-type]
    )  # fmt: skip


def test_a_study_is_due_after_its_quiet_time_with_all_its_images(tmp_path: Path) -> None:
    buffer = StudyBuffer(tmp_path / "b.sqlite3")
    assert buffer.add("2.25.9", _image(1, "LATERAL"), StudyPseudonyms(patient="p-1"), at=T0)
    assert buffer.add("2.25.9", _image(2), StudyPseudonyms(patient="p-1"), at=T0 + timedelta(seconds=5))
    assert not buffer.add("2.25.9", _image(2), StudyPseudonyms(), at=T0 + timedelta(seconds=6)), "a resend"
    assert buffer.due(quiet_s=10, source="t", now=T0 + timedelta(seconds=12)) == []
    (due,) = buffer.due(quiet_s=10, source="t", now=T0 + timedelta(seconds=16))
    assert [i.image_id for i in due.event.images] == ["2.25.1", "2.25.2"]
    assert due.event.image_uri == "file:/s/2.dcm", "the top-level image is the first frontal one"
    assert due.event.received_at == T0 and due.event.patient == "p-1"
    buffer.mark_published("2.25.9", due.new_image_ids)
    assert buffer.due(quiet_s=10, source="t", now=T0 + timedelta(hours=1)) == []
    assert buffer.pending() == 0


def test_a_closed_study_is_due_at_once_and_a_late_image_republishes_it_whole(tmp_path: Path) -> None:
    buffer = StudyBuffer(tmp_path / "b.sqlite3")
    buffer.add("2.25.9", _image(1), StudyPseudonyms(), at=T0)
    buffer.close(["2.25.9"])
    (due,) = buffer.due(quiet_s=600, source="t", now=T0)
    buffer.mark_published("2.25.9", due.new_image_ids)
    buffer.add("2.25.9", _image(2), StudyPseudonyms(), at=T0 + timedelta(minutes=5))
    (late,) = buffer.due(quiet_s=10, source="t", now=T0 + timedelta(minutes=6))
    assert [i.image_id for i in late.event.images] == ["2.25.1", "2.25.2"] and late.new_image_ids == (
        "2.25.2",
    )


def test_pending_images_survive_a_restart_and_old_published_studies_are_forgotten(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    first = StudyBuffer(path)
    first.add("2.25.8", _image(1), StudyPseudonyms(), at=T0)
    first.add("2.25.9", _image(2), StudyPseudonyms(), at=T0)
    first.close_db()
    again = StudyBuffer(path)
    assert again.pending() == 2
    (due8, _due9) = again.due(quiet_s=1, source="t", now=T0 + timedelta(seconds=2))
    again.mark_published("2.25.8", due8.new_image_ids)
    assert again.forget_before(T0 + timedelta(days=2)) == 1, "only the published study is forgotten"
    assert again.pending() == 1


def test_an_image_given_again_is_published_again_only_when_asked(tmp_path: Path) -> None:
    buffer = StudyBuffer(tmp_path / "b.sqlite3")
    buffer.add("2.25.9", _image(1), StudyPseudonyms(), at=T0)
    buffer.add("2.25.9", _image(2), StudyPseudonyms(), at=T0)
    buffer.close(["2.25.9"])
    (due,) = buffer.due(quiet_s=600, source="t", now=T0)
    buffer.mark_published("2.25.9", due.new_image_ids)
    assert not buffer.add("2.25.9", _image(1), StudyPseudonyms(), at=T0 + timedelta(minutes=1))
    assert buffer.due(quiet_s=10, source="t", now=T0 + timedelta(minutes=2)) == [], "a sender's resend"
    assert not buffer.add("2.25.9", _image(1), StudyPseudonyms(), at=T0 + timedelta(minutes=3), again=True)
    (again,) = buffer.due(quiet_s=10, source="t", now=T0 + timedelta(minutes=4))
    assert [i.image_id for i in again.event.images] == ["2.25.1", "2.25.2"]
    assert again.new_image_ids == ("2.25.1",) and again.event.received_at == T0
