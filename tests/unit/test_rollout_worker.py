"""The rollout worker's decisions against a real model repository and a real MLflow registry (SQLite, no server).

Serving is the repository's own ``serve_version`` (no Triton to wait for); a version listed as broken fails
to come up, as a model Triton cannot load would. Repository versions: 1 (served, registry 1 by its
``cxr.served_version`` tag), 2 and 3 (registry 2 and 3 by the metadata ``promote`` writes), 4 (added by hand:
no registry entry).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from prometheus_client import generate_latest

from cxr_triage.events import ModelDecisionEventV1, utcnow
from cxr_triage.model import repository as model_repo
from cxr_triage.model.challenger import challenger_dir, rollout_state, start_rollout
from cxr_triage.model.rollout import NONE
from tests.unit.test_model_repo import small_model
from trainer import tracking
from trainer.errors import ServingError, TrackingUnavailable
from trainer.promote import PREVIOUS_CHAMPION, PREVIOUS_SERVED, SERVED_VERSION
from trainer.rollout_ledger import DecisionLedger
from trainer.rollout_metrics import RolloutMetrics
from trainer.rollout_registry import MlflowRegistry
from trainer.rollout_worker import DecisionExecutor, Handled
from trainer.settings import TrainerSettings

REGISTERED = "cxr_online"


@dataclass
class RepositoryServing:
    settings: TrainerSettings
    broken: set[str] = field(default_factory=set)
    switched: list[str] = field(default_factory=list)

    def add(self, onnx_path: Path, *, metadata: dict[str, str]) -> str:
        raise NotImplementedError

    def serve(self, version: str) -> None:
        self.switched.append(version)
        model_repo.serve_version(self.settings, int(version))
        if version in self.broken:
            raise ServingError(f"version {version} did not load")

    def serving(self) -> str | None:
        version = model_repo.serving_version(self.settings)
        return None if version is None else str(version)

    def has(self, version: str) -> bool:
        return int(version) in model_repo.list_versions(self.settings)


class FlakyRegistry(MlflowRegistry):
    """The real registry, down for the next ``outages`` promotions (a crash midway, as far as it is concerned)."""

    outages = 0

    def record_promotion(
        self,
        registry_version: str,
        decision: ModelDecisionEventV1,
        *,
        served: str,
        previous_served: str | None,
    ) -> None:
        if self.outages:
            self.outages -= 1
            raise TrackingUnavailable("no MLflow server answers")
        super().record_promotion(registry_version, decision, served=served, previous_served=previous_served)


@pytest.fixture
def settings(tmp_path: Path) -> TrainerSettings:
    settings = TrainerSettings(
        home=tmp_path / "home",
        model_name="cxr_ro",
        registered_model=REGISTERED,
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
    )
    stated = {"registered_model": REGISTERED}
    model_repo.add_version(settings, small_model(tmp_path, seed=1), metadata={})
    model_repo.add_version(
        settings, small_model(tmp_path, seed=2), metadata={**stated, "registered_model_version": "2"}
    )
    model_repo.add_version(
        settings, small_model(tmp_path, seed=3), metadata={**stated, "registered_model_version": "3"}
    )
    model_repo.add_version(
        settings, small_model(tmp_path, seed=4), metadata={"added_by": "cxr-triage model add"}
    )
    model_repo.serve_version(settings, 1)
    client = registry_client(settings)
    client.create_registered_model(REGISTERED)
    for _ in range(3):
        client.create_model_version(REGISTERED, source=str(tmp_path), run_id=None)
    client.set_model_version_tag(REGISTERED, "1", SERVED_VERSION, "1")
    client.set_registered_model_alias(REGISTERED, tracking.CHAMPION, "1")
    client.set_registered_model_alias(REGISTERED, tracking.CHALLENGER, "3")
    return settings


def registry_client(settings: TrainerSettings) -> MlflowClient:
    return tracking.client_for(settings.mlflow_tracking_uri)


@pytest.fixture
def serving(settings: TrainerSettings) -> RepositoryServing:
    return RepositoryServing(settings)


@pytest.fixture
def registry(settings: TrainerSettings) -> FlakyRegistry:
    return FlakyRegistry(settings)


@pytest.fixture
def executor(
    settings: TrainerSettings, serving: RepositoryServing, registry: FlakyRegistry
) -> DecisionExecutor:
    return DecisionExecutor(settings, serving, registry, DecisionLedger(settings.rollout_ledger_path))


def policy(
    action: str, challenger: str, *, champion: str = "1", mode: str = "canary"
) -> ModelDecisionEventV1:
    return ModelDecisionEventV1.model_validate(
        {
            "decision_id": f"md-{action}-{champion}-{challenger}",
            "action": action,
            "mode": mode,
            "champion_version": champion,
            "challenger_version": challenger,
            "reason": f"test {action}",
            "paired_studies": 240,
            "metrics": {"auroc_champion": 0.81, "auroc_challenger": 0.86, "canary_latency_p95_s": None},
            "decided_by": "policy",
        }
    )


def tags(settings: TrainerSettings, version: str) -> dict[str, str]:
    return dict(registry_client(settings).get_model_version(REGISTERED, version).tags)


def alias(settings: TrainerSettings, name: str) -> str | None:
    found = tracking.version_by_alias(registry_client(settings), REGISTERED, name)
    return None if found is None else str(found.version)


def test_rollback_stops_a_canary_tags_the_version_and_is_done_once(
    settings: TrainerSettings, executor: DecisionExecutor, serving: RepositoryServing
) -> None:
    start_rollout(settings, 2, mode="canary", fraction=0.2)
    decision = policy("rollback", "2")

    handled = executor.handle(decision)

    assert (handled.outcome, handled.registry_version) == ("rolled_back", "2")
    assert rollout_state(settings) is NONE and not challenger_dir(settings).exists()
    assert model_repo.serving_version(settings) == 1 and serving.switched == []
    version_tags = tags(settings, "2")
    assert version_tags["cxr.online_decision"] == "rollback"
    assert version_tags["cxr.online_decision_id"] == decision.decision_id
    assert version_tags["cxr.online_reason"] == "test rollback"
    assert version_tags["cxr.online.auroc_challenger"] == "0.86"
    assert version_tags["cxr.online.canary_latency_p95_s"] == "n/a"
    assert alias(settings, tracking.CHAMPION) == "1"

    # The same decision again (a lost commit), even with a new rollout of version 2 by then: nothing happens.
    start_rollout(settings, 2, mode="shadow", fraction=1.0)
    assert executor.handle(decision).outcome == "duplicate"
    assert rollout_state(settings).challenger_version == "2"


def test_promote_serves_the_challenger_stops_the_rollout_and_moves_the_champion_alias(
    settings: TrainerSettings, executor: DecisionExecutor, serving: RepositoryServing
) -> None:
    start_rollout(settings, 3, mode="shadow", fraction=1.0)
    decision = policy("promote", "3", mode="shadow")

    handled = executor.handle(decision)

    assert (handled.outcome, handled.registry_version) == ("promoted", "3")
    assert model_repo.serving_version(settings) == 3 and serving.switched == ["3"]
    assert rollout_state(settings) is NONE and not challenger_dir(settings).exists()
    assert alias(settings, tracking.CHAMPION) == "3" and alias(settings, tracking.CHALLENGER) is None
    version_tags = tags(settings, "3")
    assert version_tags[PREVIOUS_CHAMPION] == "1"
    assert version_tags[PREVIOUS_SERVED] == "1"
    assert version_tags[SERVED_VERSION] == "3"
    assert version_tags["cxr.online_decision"] == "promote"
    assert version_tags["cxr.online_paired_studies"] == "240"
    assert version_tags["cxr.online_against"] == "1"

    again = executor.handle(decision)
    assert again.outcome == "duplicate"
    assert serving.switched == ["3"] and model_repo.serving_version(settings) == 3


def test_a_version_without_a_registry_entry_is_still_promoted(
    settings: TrainerSettings, executor: DecisionExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    start_rollout(settings, 4, mode="canary", fraction=0.5)
    with caplog.at_level(logging.WARNING, logger="trainer.rollout_worker"):
        handled = executor.handle(policy("promote", "4"))
    assert (handled.outcome, handled.registry_version) == ("promoted", None)
    assert model_repo.serving_version(settings) == 4 and rollout_state(settings) is NONE
    assert alias(settings, tracking.CHAMPION) == "1"
    assert any("no registry entry" in r.getMessage() for r in caplog.records)


def test_stale_decisions_change_nothing(
    settings: TrainerSettings, executor: DecisionExecutor, serving: RepositoryServing
) -> None:
    assert executor.handle(policy("rollback", "2")).outcome == "stale"  # no rollout at all
    old = policy("promote", "2", mode="shadow").model_copy(
        update={"decided_at": utcnow() - timedelta(hours=1)}
    )
    start_rollout(settings, 2, mode="shadow", fraction=1.0)
    handled = executor.handle(old)  # taken before this rollout of the same versions started
    assert (handled.outcome, handled.detail) == ("stale", "the rollout in force started after the decision")
    assert executor.handle(policy("rollback", "3")).outcome == "stale"  # another challenger's
    handled = executor.handle(
        policy("promote", "2", champion="4", mode="shadow")
    )  # compared with another champion
    assert handled.outcome == "stale" and "version 1 is served now" in handled.detail

    assert rollout_state(settings).challenger_version == "2" and model_repo.serving_version(settings) == 1
    assert serving.switched == [] and "cxr.online_decision" not in tags(settings, "2")
    assert not settings.rollout_ledger_path.exists()  # nothing was started


def test_operator_and_non_final_decisions_and_garbage_are_skipped(
    settings: TrainerSettings, executor: DecisionExecutor
) -> None:
    start_rollout(settings, 2, mode="canary", fraction=0.2)
    operator = policy("rollback", "2").model_copy(update={"decided_by": "operator"})
    assert executor.handle(operator).outcome == "operator"
    assert executor.handle(policy("keep_waiting", "2")).outcome == "ignored"
    assert executor.process(b"{not json").outcome == "invalid"
    assert rollout_state(settings).challenger_version == "2"


def test_a_challenger_that_does_not_come_up_is_switched_back_and_the_rollout_goes_on(
    settings: TrainerSettings, executor: DecisionExecutor, serving: RepositoryServing
) -> None:
    serving.broken.add("3")
    start_rollout(settings, 3, mode="canary", fraction=0.2)
    decision = policy("promote", "3")
    handled = executor.handle(decision)
    assert handled.outcome == "failed" and "did not load" in handled.detail
    assert serving.switched == ["3", "1"] and model_repo.serving_version(settings) == 1
    assert rollout_state(settings).challenger_version == "3"
    assert alias(settings, tracking.CHAMPION) == "1"
    assert executor.handle(decision).outcome == "duplicate"


def test_a_promotion_interrupted_after_the_switch_is_resumed_not_judged_stale(
    settings: TrainerSettings, executor: DecisionExecutor, registry: FlakyRegistry, serving: RepositoryServing
) -> None:
    start_rollout(settings, 3, mode="canary", fraction=0.2)
    decision = policy("promote", "3")
    registry.outages = 1
    with pytest.raises(TrackingUnavailable):
        executor.handle(decision)
    # Serving switched and the rollout stopped before MLflow failed: read again, it looks stale but is not.
    assert model_repo.serving_version(settings) == 3 and rollout_state(settings) is NONE

    handled = executor.handle(decision)

    assert handled.outcome == "promoted" and alias(settings, tracking.CHAMPION) == "3"
    assert tags(settings, "3")[PREVIOUS_SERVED] == "1"  # what was served before the switch, not after it
    assert tags(settings, "3")[PREVIOUS_CHAMPION] == "1"
    assert serving.switched == ["3", "3"]


def test_metrics_count_by_outcome_without_versions() -> None:
    metrics = RolloutMetrics()
    decision = policy("rollback", "2")
    for outcome in ("rolled_back", "duplicate", "stale", "stale"):
        metrics.count(Handled(outcome, decision), now=1.0)
    text = generate_latest(metrics.registry).decode()
    assert 'cxr_rollout_decisions_total{outcome="rolled_back"} 1.0' in text
    assert 'cxr_rollout_decisions_total{outcome="promoted"} 0.0' in text
    assert 'cxr_rollout_skipped_total{reason="stale"} 2.0' in text
    assert 'cxr_rollout_skipped_total{reason="duplicate"} 1.0' in text
    assert "challenger_version" not in text
