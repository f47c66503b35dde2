"""``cxr-triage model shadow|canary|rollout stop|status``: the repository changes and each decision is an event."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from cxr_triage.events import ModelDecisionEventV1
from cxr_triage.feedback.store import FeedbackStore
from cxr_triage.model.challenger import challenger_dir, rollout_state
from cxr_triage.model.repository import add_version, serve_version
from cxr_triage.model.rollout import NONE, RolloutState
from cxr_triage.settings import Settings
from inference_worker import cli
from inference_worker.decisions import DecisionNotPublished
from stream_processors.config import ProcessorSettings
from stream_processors.metrics import ProcessorMetrics
from stream_processors.monitors import Monitors
from tests.paired_factories import cohort
from tests.processors_factories import T0
from tests.unit.test_model_repo import small_model


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CXR_MODEL_NAME", "cxr_cli")
    settings = Settings()
    for seed in (1, 2, 3):
        add_version(settings, small_model(tmp_path, seed=seed), metadata={})
    serve_version(settings, 1)
    return settings


@pytest.fixture
def decisions(monkeypatch: pytest.MonkeyPatch) -> list[ModelDecisionEventV1]:
    sent: list[ModelDecisionEventV1] = []
    monkeypatch.setattr(cli, "_decision_sink", lambda: sent.append)
    return sent


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli.model, list(args))
    return result.exit_code, result.output


def test_shadow_then_canary_then_stop(settings: Settings, decisions: list[ModelDecisionEventV1]) -> None:
    assert run("shadow", "2") == (0, "shadow: cxr_cli version 2 beside champion 1 (fraction 1)\n")
    assert rollout_state(settings) == RolloutState("shadow", "2", "1", 1.0)
    code, out = run("canary", "3", "--fraction", "0.1")
    assert code == 0 and rollout_state(settings) == RolloutState("canary", "3", "1", 0.1)
    code, out = run("status", "--json")
    assert code == 0 and json.loads(out) == {
        "model_name": "cxr_cli",
        "champion": 1,
        "rollout": {"mode": "canary", "challenger": "3", "fraction": 0.1, "champion_at_start": "1"},
        # No feedback store yet (no processor ran): the processors' numbers are null, not an error.
        "online_evaluation": dict.fromkeys(
            ("judged", "action", "reason", "paired", "canary", "decision", "examples")
        ),
    }
    assert run("rollout", "stop") == (0, "stopped canary of version 3\n")
    assert rollout_state(settings) is NONE and not challenger_dir(settings).exists()
    assert run("rollout", "stop") == (0, "no rollout in progress\n")  # nothing to stop: no event

    assert [(d.action, d.mode, d.challenger_version, d.champion_version, d.fraction) for d in decisions] == [
        ("shadow_started", "shadow", "2", "1", 1.0),
        ("canary_started", "canary", "3", "1", 0.1),
        ("stopped", "canary", "3", "1", 0.1),
    ]
    assert all(d.decided_by == "operator" for d in decisions)
    assert len({d.decision_id for d in decisions}) == 3
    assert json.loads(run("status", "--json")[1])["rollout"]["mode"] == "none"


def test_refusals_change_nothing_and_publish_nothing(
    settings: Settings, decisions: list[ModelDecisionEventV1]
) -> None:
    code, out = run("shadow", "1")
    assert code == 1 and "champion" in out
    code, out = run("canary", "7", "--fraction", "0.2")
    assert code == 1 and "no version 7" in out
    code, out = run("canary", "2")
    assert code == 2 and "--fraction" in out  # a canary always names its fraction
    code, out = run("canary", "2", "--fraction", "0")
    assert code == 2
    assert decisions == [] and rollout_state(settings) is NONE


def test_a_decision_kafka_refused_fails_the_command_and_a_rerun_publishes_it(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[ModelDecisionEventV1] = []

    def down(event: ModelDecisionEventV1) -> None:
        raise DecisionNotPublished("cxr.model-decisions.v1: all brokers down")

    monkeypatch.setattr(cli, "_decision_sink", lambda: down)
    code, out = run("shadow", "2", "--fraction", "0.5")
    assert code == 1 and "run the command again" in out
    assert rollout_state(settings).mode == "shadow"  # in force: Triton serves it already
    config = (challenger_dir(settings) / "config.pbtxt").stat().st_mtime_ns

    monkeypatch.setattr(cli, "_decision_sink", lambda: sent.append)
    assert run("shadow", "2", "--fraction", "0.5")[0] == 0
    assert (challenger_dir(settings) / "config.pbtxt").stat().st_mtime_ns == config  # Triton reloads nothing
    assert [d.action for d in sent] == ["shadow_started"]


def test_status_shows_the_paired_metrics_and_counts_the_processors_computed(
    settings: Settings, decisions: list[ModelDecisionEventV1]
) -> None:
    assert run("shadow", "2")[0] == 0
    # The processors read the operator's decision and judge the shadow on 200 paired verdicted studies.
    config = ProcessorSettings(
        rollout_min_paired=100,
        rollout_min_per_class=20,
        metrics_interval_s=0.001,
        rollout_bootstrap_resamples=200,
    )
    assert config.feedback_db_path == settings.feedback_db_path
    monitors = Monitors(
        config,
        store=FeedbackStore(config.feedback_db_path),
        metrics=ProcessorMetrics(),
        images=None,  # type: ignore[arg-type]  # no image read here
    )
    [started] = decisions
    monitors.observe_decision(started.model_copy(update={"decided_at": T0 - timedelta(hours=1)}))
    for e in cohort(200, "shuffled"):
        monitors.store_feedback(e)
    assert monitors.rollout() == []
    store_bytes = config.feedback_db_path.read_bytes()

    code, out = run("status", "--json")
    assert code == 0
    online = json.loads(out)["online_evaluation"]
    assert online["judged"]["challenger_version"] == "2" and online["judged"]["mode"] == "shadow"
    assert online["judged"]["fraction"] == 1.0 and online["examples"] == 200
    assert online["action"] == "keep_waiting" and "not shown to be above" in online["reason"]
    paired = online["paired"]
    assert (paired["paired"], paired["champion_version"], paired["challenger_version"]) == (200, "1", "2")
    assert paired["difference_ci_high"] < 0 and online["canary"] is None and online["decision"] is None
    assert config.feedback_db_path.read_bytes() == store_bytes  # read-only

    code, out = run("status")
    assert code == 0 and "paired: 200 studies" in out and "policy: keep_waiting" in out


def test_status_with_an_unreadable_store_shows_nulls(settings: Settings) -> None:
    settings.feedback_db_path.parent.mkdir(parents=True, exist_ok=True)
    settings.feedback_db_path.write_bytes(b"not a database")
    code, out = run("status", "--json")
    assert code == 0 and set(json.loads(out)["online_evaluation"].values()) == {None}
