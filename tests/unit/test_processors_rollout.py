"""The processors' online evaluation on a real store: the paired set, one final decision per challenger,
republished unchanged after a crash, and gauges without study ids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxr_triage.feedback.store import FeedbackStore
from stream_processors.config import ProcessorSettings
from stream_processors.metrics import ProcessorMetrics
from stream_processors.monitors import Monitors
from stream_processors.status import feedback_stats
from tests.paired_factories import cohort, example
from tests.processors_factories import prediction

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


def _sample(monitors: Monitors, name: str, **labels: str) -> float | None:
    return monitors.metrics.registry.get_sample_value(name, labels)


def test_a_shuffled_shadow_challenger_is_not_promoted(tmp_path: Path) -> None:
    monitors = _monitors(tmp_path)
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
    monitors = _monitors(tmp_path)
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
    # Recorded, not yet acknowledged by Kafka: a restart publishes the very same event again.
    restarted = _monitors(tmp_path)
    assert restarted.rollout() == [decision]
    restarted.mark_decision_published(decision)
    assert restarted.rollout() == [] and _monitors(tmp_path).rollout() == []
    assert _sample(restarted, "cxr_rollout_decisions_total", action="promote") == 1


def test_a_canary_below_its_sensitivity_floor_is_rolled_back(tmp_path: Path) -> None:
    monitors = _monitors(tmp_path)
    # The canary (version 2) orders 40 studies and misses most abnormal ones; the champion reads them in shadow.
    for i in range(40):
        abnormal = i % 2 == 0
        monitors.store_feedback(
            example(i, abnormal=abnormal, champion=0.9 if abnormal else 0.1, challenger=0.2, arm="canary")
        )
    for i in range(40, 80):
        monitors.store_feedback(example(i, abnormal=i % 2 == 0, champion=0.7, challenger=None, read_s=60))
    [decision] = monitors.rollout()
    assert (decision.action, decision.mode) == ("rollback", "canary")
    assert "canary sensitivity 0.000" in decision.reason and decision.metrics["canary_examples"] == 40
    assert _sample(monitors, "cxr_rollout_arm_examples", model_version="2", arm="canary") == 40
    assert _sample(monitors, "cxr_rollout_arm_time_to_read_seconds", model_version="1", arm="champion") == 60


def test_nothing_under_evaluation_changes_nothing(tmp_path: Path) -> None:
    monitors = _monitors(tmp_path)
    for e in cohort(30, "equal"):
        monitors.store_feedback(e.model_copy(update={"shadow": {}}))
    assert monitors.rollout() == [] and monitors.rollout_state().challengers == {}


def test_feedback_stats_show_the_challengers_and_decisions(tmp_path: Path) -> None:
    monitors = _monitors(tmp_path)
    for e in cohort(200, "better"):
        monitors.store_feedback(e)
    [decision] = monitors.rollout()
    rollout = feedback_stats(monitors.store)["rollout"]
    assert rollout["challengers"]["2"]["action"] == "promote"
    assert rollout["decisions"]["2"]["decision_id"] == decision.decision_id
    assert rollout["decisions"]["2"]["published"] is False
