"""The retrain trigger: fires once at the threshold, waits for the result, moves with a promotion."""

from __future__ import annotations

from cxr_triage.events import MetricsEventV1, TrainingResultEventV1
from stream_processors.trigger import TriggerPolicy, TriggerState, decide, observe_serving, settle
from tests.processors_factories import result

POLICY = TriggerPolicy(
    min_labels=10,
    auroc_floor=0.7,
    sensitivity_floor=0.8,
    floor_min_examples=5,
    failure_backoff_s=60.0,
    failure_backoff_max_s=200.0,
)


def _settle(state: TriggerState, result: TrainingResultEventV1, now: float = 0.0) -> TriggerState:
    return settle(state, result, now=now, policy=POLICY)


def _decide(state: TriggerState, stored: int, **kw: object) -> TriggerState:
    """``stored`` examples with seq 1..stored."""
    args: dict[str, object] = {"metrics": None, "drift_alert": False, "now": 0.0} | kw
    return decide(
        state,
        total=stored,
        max_seq=stored,
        count_after=lambda seq: max(0, stored - seq),
        policy=POLICY,
        **args,  # type: ignore[arg-type]
    )


def test_fires_exactly_once_at_the_threshold_until_its_result() -> None:
    state = observe_serving(TriggerState(), "1")
    assert _decide(state, 9).pending is None
    fired = _decide(state, 10)
    assert fired.pending is not None and not fired.published
    request = fired.pending
    assert (request.reason, request.after_seq, request.up_to_seq, request.champion_version) == (
        "new_labels",
        0,
        10,
        "1",
    )
    assert request.labelled_since_champion == 10
    assert _decide(fired, 50).pending == request  # outstanding: no second request, whatever arrives
    same = _decide(state, 10).pending  # the same decision again (after a crash) carries the same id
    assert same is not None and same.request_id == request.request_id


def test_promotion_moves_the_champion_and_its_data_window() -> None:
    fired = _decide(observe_serving(TriggerState(), "1"), 10)
    assert fired.pending is not None
    done = _settle(fired, result(fired.pending.request_id, outcome="promoted", serving="2", up_to_seq=10))
    assert (done.pending, done.handled, done.champion_version, done.champion_up_to_seq) == (None, 1, "2", 10)
    assert _decide(done, 19).pending is None
    again = _decide(done, 20).pending
    assert again is not None and again.after_seq == 10 and again.request_id != fired.pending.request_id


def test_a_rejected_challenger_waits_for_new_labels_before_the_next_request() -> None:
    fired = _decide(TriggerState(champion_version="1"), 10)
    assert fired.pending is not None
    done = _settle(fired, result(fired.pending.request_id, outcome="rejected"))
    assert done.pending is None and done.champion_version == "1" and done.handled == 1
    assert _decide(done, 19).pending is None
    retry = _decide(done, 20).pending
    assert retry is not None and retry.after_seq == 0 and retry.request_id != fired.pending.request_id


def test_a_result_of_another_request_settles_nothing() -> None:
    fired = _decide(TriggerState(), 10)
    assert _settle(fired, result("tr-someone-else")) == fired


def _metrics(auroc: float | None, sensitivity: float | None, examples: int) -> MetricsEventV1:
    return MetricsEventV1(
        model_name="m",
        model_version="1",
        window="sliding",
        examples=examples,
        abnormal=examples // 2,
        auroc_abnormal=auroc,
        sensitivity=sensitivity,
    )


def test_floors_apply_only_with_enough_examples() -> None:
    state = TriggerState(champion_version="1")
    assert _decide(state, 4, metrics=_metrics(0.5, 0.5, 4)).pending is None
    low_auroc = _decide(state, 5, metrics=_metrics(0.6, 0.9, 5)).pending
    assert low_auroc is not None and low_auroc.reason == "auroc_floor"
    low_sens = _decide(state, 5, metrics=_metrics(0.9, 0.7, 5)).pending
    assert low_sens is not None and low_sens.reason == "sensitivity_floor"
    assert _decide(state, 5, metrics=_metrics(0.9, 0.9, 5)).pending is None


def test_drift_alert_fires_a_request() -> None:
    fired = _decide(TriggerState(champion_version="1"), 3, drift_alert=True).pending
    assert fired is not None and fired.reason == "drift"


def test_a_failed_run_is_retried_after_a_doubling_backoff_not_after_new_labels() -> None:
    fired = _decide(TriggerState(champion_version="1"), 10)
    assert fired.pending is not None
    failed = _settle(fired, result(fired.pending.request_id, outcome="failed"), now=1000.0)
    assert (failed.pending, failed.cooldown_after_seq, failed.retry_after) == (None, None, 1060.0)
    assert _decide(failed, 10, now=1059.0).pending is None  # within the backoff
    retry = _decide(failed, 10, now=1060.0)  # the same 10 labels: no new ones needed
    assert retry.pending is not None and retry.pending.request_id != fired.pending.request_id
    assert (retry.pending.after_seq, retry.pending.up_to_seq) == (0, 10)
    # Failed again: twice the wait; a third time: capped at the max.
    again = _settle(retry, result(retry.pending.request_id, outcome="failed"), now=2000.0)
    assert again.retry_after == 2120.0 and again.consecutive_failures == 2
    third = _decide(again, 10, now=2120.0)
    assert third.pending is not None
    capped = _settle(third, result(third.pending.request_id, outcome="failed"), now=3000.0)
    assert capped.retry_after == 3200.0
    # A success resets the count: the next failure waits the first backoff again.
    fourth = _decide(capped, 10, now=3200.0)
    assert fourth.pending is not None
    promoted = _settle(
        fourth, result(fourth.pending.request_id, outcome="promoted", serving="2", up_to_seq=10)
    )
    assert (promoted.consecutive_failures, promoted.retry_after) == (0, None)


def test_a_rejection_still_cools_down_and_a_later_failure_keeps_that_cooldown() -> None:
    fired = _decide(TriggerState(champion_version="1"), 10)
    assert fired.pending is not None
    rejected = _settle(fired, result(fired.pending.request_id, outcome="rejected"), now=0.0)
    assert rejected.cooldown_after_seq == 10 and rejected.retry_after is None
    assert _decide(rejected, 19, now=1e9).pending is None  # time alone never lifts a rejection's cooldown
    second = _decide(rejected, 20)
    assert second.pending is not None
    failed = _settle(second, result(second.pending.request_id, outcome="failed"), now=0.0)
    assert failed.cooldown_after_seq == 10
    assert _decide(failed, 20, now=60.0).pending is not None
