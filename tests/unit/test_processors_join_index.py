"""The join table's index: the expiry timer reads waiting keys only, and settled studies leave after the TTL."""

from __future__ import annotations

from stream_processors import join
from stream_processors.join_index import JoinIndex
from tests.processors_factories import prediction, study, verdict


def _settled(study_id: str, at: float) -> join.JoinState:
    state = join.on_prediction(
        join.on_study(join.JoinState(), study(study_id)).state, prediction(study_id)
    ).state
    state = join.on_verdict(state, verdict(study_id), now=at).state
    return state.model_copy(update={"updated_at": at})


def _waiting(study_id: str, at: float) -> join.JoinState:
    return join.on_verdict(join.JoinState(), verdict(study_id), now=at).state.model_copy(
        update={"updated_at": at}
    )


def test_waiting_keys_follow_every_write() -> None:
    index = JoinIndex()
    index.update(b"s1", _waiting("s1", 1.0), now=1.0)
    index.update(b"s2", _settled("s2", 1.0), now=1.0)
    assert index.waiting == {b"s1"}
    index.update(b"s1", _settled("s1", 2.0), now=2.0)  # its study and prediction arrived: joined
    assert index.waiting == set()


def test_settled_studies_come_out_oldest_first_and_only_past_the_cutoff() -> None:
    index = JoinIndex()
    for i, at in enumerate((10.0, 20.0, 30.0)):
        index.update(f"s{i}".encode(), _settled(f"s{i}", at), now=at)
    index.update(b"w", _waiting("w", 5.0), now=5.0)  # waiting: never pruned, whatever its age
    assert index.settled_before(25.0) == [b"s0", b"s1"]
    index.update(b"s0", _settled("s0", 40.0), now=40.0)  # touched again (an amendment): moves to the back
    assert index.settled_before(25.0) == [b"s1"]
    index.forget(b"s1")
    assert index.settled_before(100.0) == [b"s2", b"s0"] and len(index) == 2


def test_rebuild_after_recovery_orders_by_last_update_and_dates_old_states_now() -> None:
    index = JoinIndex()
    legacy = _settled("old", 0.0).model_copy(update={"updated_at": None})  # saved before updated_at existed
    index.rebuild(
        [
            (b"b", _settled("b", 20.0)),
            (b"a", _settled("a", 10.0)),
            (b"old", legacy),
            (b"w", _waiting("w", 1.0)),
        ],
        now=50.0,
    )
    assert index.built and index.waiting == {b"w"}
    assert index.settled_before(50.0) == [b"a", b"b"]
    assert index.settled_before(51.0) == [b"a", b"b", b"old"]
