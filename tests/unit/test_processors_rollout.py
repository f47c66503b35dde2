"""The processors' online evaluation on a real store: the rollout the operators started is judged (from its
start, until stopped), the paired set, one final decision per challenger, republished unchanged after a crash,
and gauges without study ids."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cxr_triage.events import DecisionAction, ModelDecisionEventV1, RolloutMode
from cxr_triage.feedback.store import FeedbackStore
from stream_processors.config import ProcessorSettings
from stream_processors.metrics import ProcessorMetrics
from stream_processors.monitors import Monitors
from stream_processors.status import feedback_stats
from tests.paired_factories import cohort, example
from tests.processors_factories import T0, prediction

SETTINGS: dict[str, Any] = {
    "rollout_min_paired": 100,
    "rollout_min_per_class": 20,
    "canary_min_examples": 30,
    "metrics_interval_s": 0.001,
}


def _monitors(home: Path) -> Monitors:
    config = ProcessorSettings(home=home, **SETTINGS)
    monitors = Monitors(
        config,
        store=FeedbackStore(config.feedback_db_path),
        metrics=ProcessorMetrics(),
        images=None,  # type: ignore[arg-type]  # no image read here
    )
    monitors.observe_prediction(prediction("any", version="1"))
    return monitors


def operator(
    action: DecisionAction,
    challenger: str = "2",
    *,
    mode: RolloutMode = "shadow",
    fraction: float = 1.0,
    at: datetime = T0 - timedelta(hours=1),
) -> ModelDecisionEventV1:
    return ModelDecisionEventV1(
        decision_id=uuid.uuid4().hex,
        action=action,
        mode=mode,
        champion_version="1",
        challenger_version=challenger,
        fraction=fraction,
        decided_by="operator",
        decided_at=at,
    )


def _started(home: Path, mode: RolloutMode = "shadow", fraction: float = 1.0) -> Monitors:
    monitors = _monitors(home)
    assert monitors.observe_decision(operator(f"{mode}_started", mode=mode, fraction=fraction))  # type: ignore[arg-type]
    return monitors


def _sample(monitors: Monitors, name: str, **labels: str) -> float | None:
    return monitors.metrics.registry.get_sample_value(name, labels)


def test_a_shuffled_shadow_challenger_is_not_promoted(tmp_path: Path) -> None:
    monitors = _started(tmp_path)
    for e in cohort(200, "shuffled"):
        monitors.store_feedback(e)
    assert monitors.rollout() == []
    state = monitors.rollout_state()
    assert state.decisions == {}
    assert state.challengers["2"]["action"] == "keep_waiting" and state.challengers["2"]["mode"] == "shadow"
    assert state.challengers["2"]["paired"]["paired"] == 200
    assert (
        _sample(
            monitors,
            "cxr_rollout_paired_studies",
            champion_version="1",
            challenger_version="2",
            mode="shadow",
        )
        == 200
    )
    assert _sample(monitors, "cxr_rollout_decision", challenger_version="2", action="keep_waiting") == 1
    high = _sample(monitors, "cxr_rollout_auroc_difference", challenger_version="2", bound="ci_high")
    assert high is not None and high < 0
    assert b"s1" not in monitors.metrics.exposition()  # no study id in any label


def test_a_good_challenger_is_promoted_once_and_republished_unchanged_after_a_crash(tmp_path: Path) -> None:
    monitors = _started(tmp_path)
    examples = cohort(200, "better")
    for e in examples[:50]:
        monitors.store_feedback(e)
    assert monitors.rollout() == []  # 50 paired: too few
    for e in examples[50:]:
        monitors.store_feedback(e)
    [decision] = monitors.rollout()
    assert (decision.action, decision.mode, decision.champion_version, decision.challenger_version) == (
        "promote",
        "shadow",
        "1",
        "2",
    )
    assert decision.paired_studies == 200 and (decision.metrics["difference_ci_low"] or -1) > -0.02
    assert decision.fraction == 1.0 and monitors.rollout_state().current is None
    # The policy's own decision read back from the topic changes nothing more.
    assert not monitors.observe_decision(decision)
    # Recorded, not yet acknowledged by Kafka: a restart publishes the very same event again.
    restarted = _monitors(tmp_path)
    assert restarted.rollout() == [decision]
    restarted.mark_decision_published(decision)
    assert restarted.rollout() == [] and _monitors(tmp_path).rollout() == []
    assert _sample(restarted, "cxr_rollout_decisions_total", action="promote") == 1


def test_a_canary_below_its_sensitivity_floor_is_rolled_back(tmp_path: Path) -> None:
    monitors = _started(tmp_path, "canary", 0.5)
    # The canary (version 2) orders 40 studies and misses most abnormal ones; the champion reads them in shadow.
    for i in range(40):
        abnormal = i % 2 == 0
        monitors.store_feedback(
            example(i, abnormal=abnormal, champion=0.9 if abnormal else 0.1, challenger=0.2, arm="canary")
        )
    for i in range(40, 80):
        monitors.store_feedback(example(i, abnormal=i % 2 == 0, champion=0.7, challenger=None, read_s=60))
    [decision] = monitors.rollout()
    assert (decision.action, decision.mode, decision.fraction) == ("rollback", "canary", 0.5)
    assert monitors.rollout_state().current is None  # rolled back: not judged again
    assert "canary sensitivity 0.000" in decision.reason and decision.metrics["canary_examples"] == 40
    assert _sample(monitors, "cxr_rollout_arm_examples", model_version="2", arm="canary") == 40
    assert _sample(monitors, "cxr_rollout_arm_time_to_read_seconds", model_version="1", arm="champion") == 60


def test_nothing_under_evaluation_changes_nothing(tmp_path: Path) -> None:
    monitors = _started(tmp_path)
    for e in cohort(30, "equal"):
        monitors.store_feedback(e.model_copy(update={"shadow": {}}))
    assert monitors.rollout() == []
    assert monitors.rollout_state().challengers["2"]["paired"] is None


def test_a_challenger_no_operator_started_is_not_judged(tmp_path: Path) -> None:
    monitors = _monitors(tmp_path)
    for e in cohort(200, "better"):
        monitors.store_feedback(e)
    assert monitors.rollout() == [] and monitors.rollout_state() == monitors.rollout_state().model_copy(
        update={"current": None, "challengers": {}, "decisions": {}}
    )


def test_a_stopped_challenger_is_not_judged_even_when_it_would_be_promoted(tmp_path: Path) -> None:
    monitors = _started(tmp_path)
    examples = cohort(200, "better")
    for e in examples[:50]:
        monitors.store_feedback(e)
    assert monitors.rollout() == []
    assert monitors.rollout_state().challengers["2"]["paired"]["paired"] == 50
    assert monitors.observe_decision(operator("stopped", at=T0 + timedelta(hours=1)))
    for e in examples[50:]:
        monitors.store_feedback(e)
    assert monitors.rollout() == [] and _monitors(tmp_path).rollout() == []
    state = monitors.rollout_state()
    assert state.current is None and state.decisions == {}
    assert state.challengers["2"]["paired"]["paired"] == 50  # the last numbers it was judged on, kept
    assert _sample(monitors, "cxr_rollout_decisions_total", action="promote") is None


def test_only_studies_the_challenger_scored_since_its_start_count(tmp_path: Path) -> None:
    monitors = _monitors(tmp_path)
    # Started after the cohort was scored (an earlier rollout of the same version): none of it counts.
    monitors.observe_decision(operator("shadow_started", at=T0 + timedelta(minutes=5)))
    for e in cohort(200, "better"):
        monitors.store_feedback(e)
    assert monitors.rollout() == []
    assert monitors.rollout_state().challengers["2"]["paired"] is None


def test_the_latest_operator_decision_wins_across_partitions_replays_and_restarts(tmp_path: Path) -> None:
    monitors = _monitors(tmp_path)
    start_2 = operator("shadow_started", "2", at=T0 - timedelta(hours=3))
    stop_2 = operator("stopped", "2", at=T0 - timedelta(hours=2))
    start_3 = operator("canary_started", "3", mode="canary", fraction=0.25, at=T0 - timedelta(hours=1))
    # Keyed by challenger: version 3's start may be read before version 2's decisions.
    assert monitors.observe_decision(start_3)
    assert not monitors.observe_decision(start_2) and not monitors.observe_decision(stop_2)
    assert not monitors.observe_decision(start_3)  # a replay
    current = _monitors(tmp_path).rollout_state().current  # durable: a restart judges the same rollout
    assert current is not None
    assert (current.mode, current.challenger_version, current.fraction) == ("canary", "3", 0.25)
    assert current.started_at == start_3.decided_at
    # A stop of another version leaves the current one; its own stop ends it.
    monitors.observe_decision(operator("stopped", "2", at=T0))
    assert monitors.rollout_state().current == current
    assert monitors.observe_decision(operator("stopped", "3", mode="canary", at=T0))
    assert monitors.rollout_state().current is None


def test_a_new_challenger_replaces_the_one_judged(tmp_path: Path) -> None:
    monitors = _started(tmp_path)
    monitors.observe_decision(operator("shadow_started", "3", at=T0 - timedelta(minutes=30)))
    for e in cohort(200, "better"):  # scored by version 2 in shadow: no longer the one judged
        monitors.store_feedback(e)
    assert monitors.rollout() == []
    assert set(monitors.rollout_state().challengers) == {"3"}


def test_feedback_stats_show_the_challengers_and_decisions(tmp_path: Path) -> None:
    monitors = _started(tmp_path)
    for e in cohort(200, "better"):
        monitors.store_feedback(e)
    [decision] = monitors.rollout()
    rollout = feedback_stats(monitors.store)["rollout"]
    assert rollout["challengers"]["2"]["action"] == "promote"
    assert rollout["decisions"]["2"]["decision_id"] == decision.decision_id
    assert rollout["decisions"]["2"]["published"] is False
