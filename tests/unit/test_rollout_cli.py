"""``cxr-triage model shadow|canary|rollout stop|status``: the repository changes and each decision is an event."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cxr_triage.events import ModelDecisionEventV1
from cxr_triage.model.challenger import challenger_dir, rollout_state
from cxr_triage.model.repository import add_version, serve_version
from cxr_triage.model.rollout import NONE, RolloutState
from cxr_triage.settings import Settings
from inference_worker import cli
from inference_worker.decisions import DecisionNotPublished
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
