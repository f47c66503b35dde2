from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cxr_triage.feedback.store import FeedbackStore
from stream_processors.cli import feedback
from tests.factories import feedback_event


def test_stats_counts_examples_per_version_and_since_a_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CXR_HOME", str(tmp_path))
    store = FeedbackStore(tmp_path / "feedback" / "feedback.sqlite3")
    for i in range(3):
        store.upsert(feedback_event(f"a{i}", model_version="1"))
    store.upsert(feedback_event("b0", model_version="2"))
    store.upsert(feedback_event("a9", model_version="1"))  # read after version 2 started serving

    result = CliRunner().invoke(feedback, ["stats", "--json", "--since-version", "2"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["total"] == 5
    assert document["by_model_version"] == {"1": 4, "2": 1}
    assert document["since_version"] == {"model_version": "2", "examples": 2}
    assert document["training_requests"]["pending"] == 0 and document["unmatched_waiting"] == 0

    table = CliRunner().invoke(feedback, ["stats", "--since-version", "7"])
    assert table.exit_code == 0 and "since model 7" in table.output and " 0 examples" in table.output


def test_stats_on_a_missing_store_fails_naming_it_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "wrong-home"))
    result = CliRunner().invoke(feedback, ["stats", "--json"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "no feedback store at" in result.output and "feedback.sqlite3" in result.output
    assert not (tmp_path / "wrong-home").exists()


@pytest.mark.parametrize("kind", ["directory", "not sqlite"])
def test_stats_on_something_that_is_not_a_store_fails_with_the_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    target = tmp_path / "db"
    if kind == "directory":
        target.mkdir()
    else:
        target.write_bytes(b"\x00garbage" * 512)
    monkeypatch.setenv("CXR_FEEDBACK_DB", str(target))
    result = CliRunner().invoke(feedback, ["stats"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "Error:" in result.output and str(target) in result.output
    assert ("not a file" if kind == "directory" else "not a readable SQLite database") in result.output


def test_since_version_is_counted_in_sql(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_HOME", str(tmp_path))
    store = FeedbackStore(tmp_path / "feedback" / "feedback.sqlite3")
    store.upsert(feedback_event("a0", model_version="2"))

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("rows loaded to count them")

    monkeypatch.setattr(FeedbackStore, "since_model_version", refuse)
    monkeypatch.setattr(FeedbackStore, "examples", refuse)
    result = CliRunner().invoke(feedback, ["stats", "--json", "--since-version", "2"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["since_version"] == {"model_version": "2", "examples": 1}
