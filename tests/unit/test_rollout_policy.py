"""The promotion policy: each branch, and decisions that keep their id."""

from __future__ import annotations

import pytest

from stream_processors.paired_metrics import ArmMetrics, PairedMetrics
from stream_processors.rollout_policy import RolloutPolicy, decide, decision_event, decision_id

POLICY = RolloutPolicy(
    min_paired=100,
    min_per_class=20,
    auroc_margin=0.02,
    sensitivity_floor=0.8,
    canary_min_examples=50,
    canary_sensitivity_floor=0.8,
    canary_latency_ceiling_s=5.0,
)


def paired(**changes: object) -> PairedMetrics:
    base: dict[str, object] = {
        "champion_version": "1",
        "challenger_version": "2",
        "paired": 150,
        "abnormal": 60,
        "auroc_champion": 0.85,
        "auroc_challenger": 0.86,
        "auroc_difference": 0.01,
        "difference_ci_low": -0.01,
        "difference_ci_high": 0.03,
        "confidence": 0.95,
        "sensitivity_challenger": 0.9,
    }
    return PairedMetrics.model_validate(base | changes)


def canary(**changes: object) -> ArmMetrics:
    base: dict[str, object] = {
        "model_version": "2",
        "arm": "canary",
        "examples": 60,
        "abnormal": 30,
        "sensitivity": 0.9,
        "latency_p95_s": 1.0,
    }
    return ArmMetrics.model_validate(base | changes)


def test_promote_when_not_worse_beyond_the_margin_and_sensitive_enough() -> None:
    decision = decide(paired(), None, policy=POLICY)
    assert decision.action == "promote" and decision.final
    assert "150 paired studies" in decision.reason


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"paired": 99}, "99 paired studies (< 100)"),
        ({"abnormal": 140}, "140 abnormal / 10 normal"),
        ({"difference_ci_low": -0.02}, "not shown to be above -0.02"),
        ({"difference_ci_low": None}, "CI low n/a"),
        ({"sensitivity_challenger": 0.79}, "challenger sensitivity 0.790 < floor 0.8"),
        ({"sensitivity_challenger": None}, "challenger sensitivity n/a"),
    ],
)
def test_keep_waiting_otherwise(changes: dict[str, object], why: str) -> None:
    decision = decide(paired(**changes), None, policy=POLICY)
    assert decision.action == "keep_waiting" and not decision.final
    assert why in decision.reason


def test_nothing_paired_yet_keeps_waiting() -> None:
    assert decide(None, None, policy=POLICY).reason == "0 paired studies (< 100)"


def test_a_canary_below_its_sensitivity_floor_is_rolled_back_even_if_paired_numbers_look_fine() -> None:
    decision = decide(paired(), canary(sensitivity=0.7), policy=POLICY)
    assert decision.action == "rollback" and "canary sensitivity 0.700 < floor 0.8" in decision.reason


def test_a_slow_canary_is_rolled_back() -> None:
    decision = decide(None, canary(latency_p95_s=6.5), policy=POLICY)
    assert decision.action == "rollback" and "latency p95 6.50 s > ceiling 5 s" in decision.reason


def test_a_canary_is_judged_only_after_enough_studies() -> None:
    assert decide(None, canary(examples=49, sensitivity=0.1), policy=POLICY).action == "keep_waiting"
    assert decide(paired(), canary(), policy=POLICY).action == "promote"


def test_the_decision_event_has_a_stable_id_and_the_numbers() -> None:
    decision = decide(paired(), canary(), policy=POLICY)
    event = decision_event(
        decision, mode="canary", champion="1", challenger="2", paired=paired(), canary=canary()
    )
    again = decision_event(
        decision, mode="canary", champion="1", challenger="2", paired=paired(), canary=canary()
    )
    assert event.decision_id == again.decision_id == decision_id("1", "2", "promote")
    assert decision_id("1", "2", "rollback") != event.decision_id
    assert (event.action, event.mode, event.paired_studies, event.decided_by) == (
        "promote",
        "canary",
        150,
        "policy",
    )
    assert event.metrics["difference_ci_low"] == -0.01 and event.metrics["canary_sensitivity"] == 0.9
