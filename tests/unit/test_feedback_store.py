from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from cxr_triage.feedback.store import FeedbackStore
from tests.factories import feedback_event


def test_a_replay_never_duplicates_an_example(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "fb.sqlite3")
    events = [feedback_event(f"s{i}") for i in range(5)]
    assert all(store.upsert(e) for e in events)
    assert not any(store.upsert(e) for e in events)  # the same records again, as a topic replay sends them
    assert store.count() == 5
    assert store.max_seq() == 5


def test_an_amendment_replaces_that_radiologists_example_under_a_new_seq(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "fb.sqlite3")
    t0 = datetime(2026, 12, 1, 9, tzinfo=UTC)
    first = feedback_event("s1", "dr-a", abnormal=True, decided_at=t0)
    other = feedback_event("s1", "dr-b", abnormal=True, decided_at=t0)
    amended = feedback_event(
        "s1", "dr-a", abnormal=False, decided_at=t0 + timedelta(minutes=5), kind="amendment"
    )
    store.upsert(first)
    store.upsert(other)
    assert store.upsert(amended)
    rows = store.examples()
    assert [(r.event.radiologist, r.event.abnormal) for r in rows] == [("dr-b", 1), ("dr-a", 0)]
    assert rows[-1].seq == 3
    # The original verdict replayed after its amendment does not bring the old labels back.
    assert not store.upsert(first)
    assert store.examples()[-1].event.verdict_id == amended.verdict_id


def test_since_model_version_and_windows(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "fb.sqlite3")
    for i in range(3):
        store.upsert(feedback_event(f"a{i}", model_version="1"))
    for i in range(2):
        store.upsert(feedback_event(f"b{i}", model_version="2"))
    store.upsert(feedback_event("c0", model_version="1"))  # a late read of a study scored before the switch
    assert store.counts_by_model_version() == {"1": 4, "2": 2}
    assert [r.event.study_id for r in store.since_model_version("2")] == ["b0", "b1", "c0"]
    assert store.since_model_version("9") == []
    assert [r.seq for r in store.examples(after_seq=2, up_to_seq=4)] == [3, 4]
    assert [r.event.study_id for r in store.scored_by("1", last=2)] == ["a2", "c0"]
    assert store.count(after_seq=4) == 2
    assert store.count(after_seq=1, up_to_seq=4) == 3 and store.count(up_to_seq=2) == 2


def test_state_documents_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "fb.sqlite3"
    FeedbackStore(path).put_state("trigger", {"pending": "r-1", "n": 3})
    FeedbackStore(path).put_state("trigger", {"pending": None, "n": 4})
    assert FeedbackStore(path).get_state("trigger") == {"pending": None, "n": 4}
    assert FeedbackStore(path).get_state("absent") is None


def test_open_existing_reads_without_creating_or_writing(tmp_path: Path) -> None:
    import sqlite3

    import pytest

    from cxr_triage.feedback.store import FeedbackStoreUnavailable

    missing = tmp_path / "nowhere" / "fb.sqlite3"
    with pytest.raises(FeedbackStoreUnavailable, match="no feedback store at"):
        FeedbackStore.open_existing(missing)
    assert not missing.parent.exists()  # nothing created on the way
    with pytest.raises(FeedbackStoreUnavailable, match="is not a file"):
        FeedbackStore.open_existing(tmp_path)
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(FeedbackStoreUnavailable, match="not a readable SQLite database"):
        FeedbackStore.open_existing(junk)
    other = tmp_path / "other.sqlite3"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE t (x)")
    with pytest.raises(FeedbackStoreUnavailable, match="not a feedback store"):
        FeedbackStore.open_existing(other)

    path = tmp_path / "fb.sqlite3"
    writer = FeedbackStore(path)
    writer.upsert(feedback_event("s1", model_version="1"))
    reader = FeedbackStore.open_existing(path)
    assert reader.count() == 1 and reader.counts_by_model_version() == {"1": 1}
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.put_state("x", {})
    writer.upsert(feedback_event("s2", model_version="2"))  # the writer goes on while a reader is open
    assert reader.count() == 2


def test_count_since_model_version_matches_the_rows(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "fb.sqlite3")
    for i, version in enumerate(["1", "1", "2", "1", "3", "2"]):
        store.upsert(feedback_event(f"s{i}", model_version=version))
    for version in ("1", "2", "3", "9"):
        assert store.count_since_model_version(version) == len(store.since_model_version(version))
    assert store.count_since_model_version("2") == 4
