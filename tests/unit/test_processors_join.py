"""The join's decisions in every arrival order, amendments, replays and the unmatched wait."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from cxr_triage import topics
from cxr_triage.events import VerdictEventV1
from cxr_triage.feedback.store import FeedbackStore
from stream_processors import join
from tests.processors_factories import T0, prediction, study, verdict


def test_verdict_after_its_study_and_prediction_becomes_feedback_at_once() -> None:
    state = join.on_study(join.JoinState(), study("s1")).state
    state = join.on_prediction(state, prediction("s1", priority=0.8)).state
    step = join.on_verdict(state, verdict("s1"), now=100.0)
    assert len(step.feedback) == 1
    example = step.feedback[0]
    assert (example.study_id, example.radiologist, example.model_version) == ("s1", "dr-a", "1")
    assert example.priority == 0.8 and example.threshold == 0.5 and example.abnormal == 1
    assert example.uncertain == ("Pneumothorax",)
    assert example.received_at < example.scored_at < example.claimed_at < example.decided_at  # type: ignore[operator]
    assert example.key == topics.verdict_key("s1", "dr-a")
    assert step.state.waiting == {} and "dr-a" in step.state.joined


def test_verdict_before_its_prediction_waits_then_joins() -> None:
    step = join.on_verdict(join.JoinState(), verdict("s1"), now=100.0)
    assert step.feedback == [] and "dr-a" in step.state.waiting
    step = join.on_prediction(step.state, prediction("s1"))
    assert step.feedback == []  # still no study event
    step = join.on_study(step.state, study("s1"))
    assert [f.verdict_id for f in step.feedback] == [verdict("s1").verdict_id]
    assert step.state.waiting == {}


def test_amendment_replaces_and_a_replayed_older_verdict_changes_nothing() -> None:
    state = join.on_prediction(join.on_study(join.JoinState(), study("s1")).state, prediction("s1")).state
    first = verdict("s1", abnormal=True)
    state = join.on_verdict(state, first, now=1.0).state
    amendment = verdict(
        "s1", abnormal=False, kind="amendment", verdict_id="amend-000001", decided_at=T0 + timedelta(hours=1)
    )
    step = join.on_verdict(state, amendment, now=2.0)
    assert [(f.verdict_id, f.kind, f.abnormal) for f in step.feedback] == [("amend-000001", "amendment", 0)]
    again = join.on_verdict(step.state, first, now=3.0)
    assert again.feedback == [] and again.state == step.state
    # The joined verdict replayed publishes its feedback again (it may have been lost in a crash).
    again = join.on_verdict(step.state, amendment, now=3.0)
    assert [f.verdict_id for f in again.feedback] == ["amend-000001"] and again.state == step.state


def test_a_replayed_joined_verdict_republishes_its_feedback_which_the_store_takes_once(
    tmp_path: Path,
) -> None:
    """The crash D1: the table write was acked, the feedback was not, the verdict's offset uncommitted."""
    state = join.on_prediction(join.on_study(join.JoinState(), study("s1")).state, prediction("s1")).state
    v = verdict("s1")
    first = join.on_verdict(state, v, now=1.0)
    assert len(first.feedback) == 1  # ... and lost: only the table's new state survived the crash
    replay = join.on_verdict(first.state, v, now=2.0)
    assert replay.state == first.state
    [again] = replay.feedback
    assert again.model_dump(exclude={"joined_at"}) == first.feedback[0].model_dump(exclude={"joined_at"})
    store = FeedbackStore(tmp_path / "fb.sqlite3")
    assert store.upsert(again)
    assert not store.upsert(join.on_verdict(replay.state, v, now=3.0).feedback[0])  # replayed once more
    assert store.count() == 1


def test_a_replayed_study_or_prediction_that_released_a_verdict_republishes_its_feedback() -> None:
    """The same crash when the study or prediction event is the one that released a waiting verdict."""
    waiting = join.on_verdict(
        join.on_prediction(join.JoinState(), prediction("s1")).state, verdict("s1"), now=1.0
    )
    released = join.on_study(waiting.state, study("s1"))
    assert [f.verdict_id for f in released.feedback] == [verdict("s1").verdict_id]
    # The study event replayed against the state that says "joined" publishes the same feedback again ...
    again = join.on_study(released.state, study("s1"))
    assert again.state == released.state
    assert [f.model_dump(exclude={"joined_at"}) for f in again.feedback] == [
        f.model_dump(exclude={"joined_at"}) for f in released.feedback
    ]
    # ... and so does the prediction event, had it been the last to arrive.
    assert [f.verdict_id for f in join.on_prediction(released.state, prediction("s1")).feedback] == [
        verdict("s1").verdict_id
    ]
    # With no verdict joined, a replayed study publishes nothing.
    lone = join.on_study(join.JoinState(), study("s1")).state
    assert join.on_study(lone, study("s1")).feedback == []


def test_two_radiologists_are_two_examples() -> None:
    state = join.on_verdict(join.JoinState(), verdict("s1", radiologist="dr-a"), now=1.0).state
    state = join.on_verdict(state, verdict("s1", radiologist="dr-b", abnormal=False), now=1.0).state
    state = join.on_study(state, study("s1")).state
    step = join.on_prediction(state, prediction("s1"))
    assert sorted(f.radiologist for f in step.feedback) == ["dr-a", "dr-b"]


def test_unmatched_verdict_is_dead_lettered_after_the_wait_with_its_reason() -> None:
    v = verdict("unknown-study")
    state = join.on_verdict(join.JoinState(), v, now=100.0).state
    assert join.expire(state, now=109.0, wait_s=10.0).dead_letters == []
    step = join.expire(state, now=110.0, wait_s=10.0)
    [dead] = step.dead_letters
    assert dead.stage == "processor" and dead.error_type == "UnmatchedVerdict"
    assert dead.study_id == "unknown-study" and dead.original_topic == topics.VERDICTS
    assert "no study and no prediction" in dead.reason
    assert VerdictEventV1.model_validate_json(dead.original or "") == v
    assert step.state.waiting == {}


def test_a_redelivered_waiting_verdict_keeps_its_original_wait() -> None:
    v = verdict("s1")
    state = join.on_verdict(join.JoinState(), v, now=100.0).state
    state = join.on_verdict(state, v, now=150.0).state
    assert state.waiting["dr-a"].since == 100.0


def test_an_older_prediction_does_not_replace_a_newer_one() -> None:
    newer = prediction("s1", version="2", scored_at=T0 + timedelta(hours=1))
    state = join.on_prediction(join.JoinState(), newer).state
    state = join.on_prediction(state, prediction("s1", version="1")).state
    assert state.prediction == newer


def test_state_survives_its_json_round_trip() -> None:
    state = join.on_verdict(join.on_study(join.JoinState(), study("s1")).state, verdict("s1"), now=1.0).state
    assert join.JoinState.model_validate(state.model_dump(mode="json")) == state


def test_a_verdict_for_an_unknown_or_pruned_study_says_so_in_its_dead_letter() -> None:
    state = join.on_verdict(join.JoinState(), verdict("gone"), now=0.0).state
    [dead] = join.expire(state, now=10.0, wait_s=10.0, settled_ttl_s=604800.0).dead_letters
    assert (
        "no study and no prediction" in dead.reason and "pruned" in dead.reason and "604800 s" in dead.reason
    )


def test_drop_waiting_removes_only_the_dead_lettered_verdicts_still_waiting() -> None:
    state = join.on_verdict(join.JoinState(), verdict("s1", radiologist="dr-a"), now=0.0).state
    dead = join.expire(state, now=10.0, wait_s=10.0).dead_letters
    # Meanwhile dr-a amended (a new verdict id waits) and dr-b's verdict arrived: both stay.
    amended = verdict("s1", radiologist="dr-a", verdict_id="amend-000001", decided_at=T0 + timedelta(hours=1))
    newer = join.on_verdict(state, amended, now=11.0).state
    newer = join.on_verdict(newer, verdict("s1", radiologist="dr-b"), now=11.0).state
    assert join.drop_waiting(newer, dead) == newer
    assert join.drop_waiting(state, dead).waiting == {}


def test_settled_means_study_prediction_and_a_joined_verdict_with_nothing_waiting() -> None:
    state = join.on_prediction(join.on_study(join.JoinState(), study("s1")).state, prediction("s1")).state
    assert not join.settled(state)  # unread yet: its verdict must still find it
    state = join.on_verdict(state, verdict("s1"), now=1.0).state
    assert join.settled(state)
    waiting = join.on_verdict(join.JoinState(), verdict("s2"), now=1.0).state
    assert not join.settled(waiting)
