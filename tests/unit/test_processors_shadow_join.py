"""Shadow predictions in the join: never the serving reading, always paired with the verdict, in any order."""

from __future__ import annotations

import itertools
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from cxr_triage.events import FeedbackEventV1, PredictionEventV1
from cxr_triage.feedback.store import FeedbackStore
from stream_processors import join
from tests.processors_factories import T0, prediction, study, verdict


def shadow(
    study_id: str, *, priority: float = 0.3, version: str = "2", seconds: float = 3
) -> PredictionEventV1:
    scored = prediction(
        study_id, priority=priority, version=version, scored_at=T0 + timedelta(seconds=seconds)
    )
    return scored.model_copy(update={"role": "shadow"})


def _feed(state: join.JoinState, event: object) -> join.Step:
    if isinstance(event, PredictionEventV1):
        return join.on_prediction(state, event)
    if event == "study":
        return join.on_study(state, study("s1"))
    return join.on_verdict(state, verdict("s1"), now=1.0)


def test_a_newer_shadow_prediction_never_replaces_the_serving_one() -> None:
    state = join.on_study(join.JoinState(), study("s1")).state
    state = join.on_prediction(state, prediction("s1", priority=0.9)).state
    state = join.on_prediction(state, shadow("s1", priority=0.2, seconds=60)).state
    [example] = join.on_verdict(state, verdict("s1"), now=1.0).feedback
    assert (example.model_version, example.priority, example.arm) == ("1", 0.9, "champion")
    assert list(example.shadow) == ["2"] and example.shadow["2"].priority == 0.2
    assert example.shadow["2"].role == "shadow"


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_the_paired_example_is_complete_whatever_the_arrival_order(
    order: tuple[int, ...], tmp_path: Path
) -> None:
    events: list[object] = ["study", prediction("s1", priority=0.9), shadow("s1"), "verdict"]
    store = FeedbackStore(tmp_path / "f.sqlite3")
    state = join.JoinState()
    published: list[FeedbackEventV1] = []
    for index in order:
        step = _feed(state, events[index])
        state = step.state
        published.extend(step.feedback)
        for example in step.feedback:
            store.upsert(example)
    assert published, "the verdict was never joined"
    [row] = store.examples()
    assert row.seq == 1  # a late shadow is merged into the row, not a new example
    assert (row.event.model_version, row.event.priority) == ("1", 0.9)
    assert set(row.event.shadow) == {"2"} and row.event.shadow["2"].priority == 0.3
    assert [r.seq for r in store.scored_by_all(("1", "2"))] == [1]


def test_a_replayed_shadow_publishes_nothing_and_the_serving_version_in_shadow_is_left_out() -> None:
    state = join.on_study(join.JoinState(), study("s1")).state
    state = join.on_prediction(state, prediction("s1")).state
    state = join.on_verdict(state, verdict("s1"), now=1.0).state
    step = join.on_prediction(state, shadow("s1"))
    assert [set(f.shadow) for f in step.feedback] == [{"2"}]
    assert join.on_prediction(step.state, shadow("s1")).feedback == []
    same = join.on_prediction(step.state, shadow("s1", version="1", seconds=9))
    assert [set(f.shadow) for f in same.feedback] == [{"2"}]


def test_a_canary_ordered_study_carries_its_arm() -> None:
    canary = prediction("s1", version="2").model_copy(update={"arm": "canary"})
    state = join.on_study(join.JoinState(), study("s1")).state
    state = join.on_prediction(state, canary).state
    state = join.on_prediction(state, shadow("s1", version="1")).state
    [example] = join.on_verdict(state, verdict("s1"), now=1.0).feedback
    assert (example.model_version, example.arm, list(example.shadow)) == ("2", "canary", ["1"])


def test_a_shadow_only_state_is_settled_so_it_leaves_the_table() -> None:
    state = join.on_prediction(join.JoinState(), shadow("s1")).state
    assert join.settled(state)
    assert not join.settled(join.on_study(state, study("s1")).state)


def test_store_merges_late_shadows_and_an_amendment_replaces_the_scores(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "f.sqlite3")
    state = join.on_study(join.JoinState(), study("s1")).state
    state = join.on_prediction(state, prediction("s1")).state
    step = join.on_verdict(state, verdict("s1"), now=1.0)
    assert store.upsert(step.feedback[0])
    assert store.scored_by_all(("1", "2")) == []
    step = join.on_prediction(step.state, shadow("s1"))
    assert store.upsert(step.feedback[0]) and not store.upsert(step.feedback[0])
    assert [r.seq for r in store.scored_by_all(("1", "2"))] == [1]
    assert store.score_roles() == {
        ("1", "serving", "champion"): (1, 1, 1),
        ("2", "shadow", "champion"): (1, 1, 1),
    }
    amendment = verdict(
        "s1", abnormal=False, kind="amendment", verdict_id="amend-0001", decided_at=T0 + timedelta(hours=1)
    )
    [amended] = join.on_verdict(step.state, amendment, now=2.0).feedback
    assert store.upsert(amended)
    [row] = store.scored_by_all(("1", "2"))
    assert row.seq == 2 and row.event.abnormal == 0 and set(row.event.shadow) == {"2"}
    assert store.score_roles() == {
        ("1", "serving", "champion"): (1, 2, 2),
        ("2", "shadow", "champion"): (1, 2, 2),
    }


def test_an_old_store_gets_its_examples_indexed_as_the_champions(tmp_path: Path) -> None:
    path = tmp_path / "f.sqlite3"
    store = FeedbackStore(path)
    state = join.on_prediction(join.on_study(join.JoinState(), study("s1")).state, prediction("s1")).state
    store.upsert(join.on_verdict(state, verdict("s1"), now=1.0).feedback[0])
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE example_scores")
    assert FeedbackStore(path).score_roles() == {("1", "serving", "champion"): (1, 1, 1)}
