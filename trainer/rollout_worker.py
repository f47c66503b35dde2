"""Carrying out the online-evaluation policy's decisions (``cxr.model-decisions.v1``), without Kafka.

Only ``decided_by="policy"`` decisions with action ``promote`` or ``rollback`` are acted on; an operator's
decision (``model shadow|canary|rollout stop``) is already in force when it is published. Each is judged
against the repository, the source of truth of what Triton serves:

* **stale**: the challenger it names is not the one in the rollout now (stopped, replaced), the rollout
  started after the decision was taken (its ``ROLLOUT`` file is newer: a new rollout of the same versions is
  not judged by an old one's numbers), or, for a promotion, the served version is no longer the one the
  challenger was compared with. Skipped with a log line.
* **promote**: the challenger's version is served under the main model name, as ``cxr-triage promote``
  switches (waiting for Triton when it runs; a version that does not come up is switched back and the
  decision is recorded ``failed``); then the rollout is stopped; then MLflow: decision tags and the paired
  numbers on the registry version, the ``champion`` alias moved to it, with the tags ``cxr-triage rollback``
  walks back.
* **rollback**: the rollout is stopped (the champion keeps serving), then the decision tags in MLflow.

The ledger (``trainer.rollout_ledger``) makes it idempotent: a finished decision is a duplicate, a started
one is resumed. A registry error propagates: the caller reads the decision again later (at-least-once).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from pydantic import ValidationError

from cxr_triage.events import ModelDecisionEventV1
from cxr_triage.model.challenger import ROLLOUT_FILE, challenger_dir, rollout_state, stop_rollout
from cxr_triage.model.repository import serving_version
from trainer.errors import ServingError
from trainer.promote import switch_serving
from trainer.rollout_ledger import DecisionLedger
from trainer.rollout_registry import OnlineRegistry
from trainer.serving import ServingTarget
from trainer.settings import TrainerSettings

logger = logging.getLogger(__name__)

Outcome = Literal["promoted", "rolled_back", "failed", "duplicate", "stale", "operator", "ignored", "invalid"]
CARRIED_OUT: Final = ("promoted", "rolled_back", "failed")
SKIPPED: Final = ("duplicate", "stale", "operator", "ignored", "invalid")


@dataclass(frozen=True)
class Handled:
    outcome: Outcome
    decision: ModelDecisionEventV1 | None
    detail: str = ""
    registry_version: str | None = None

    def to_dict(self) -> dict[str, object]:
        body: dict[str, object] = {"handled": self.outcome, "detail": self.detail}
        if self.decision is not None:
            body |= {
                "decision_id": self.decision.decision_id,
                "action": self.decision.action,
                "challenger_version": self.decision.challenger_version,
                "champion_version": self.decision.champion_version,
                "registry_version": self.registry_version,
            }
        return body


@dataclass
class DecisionExecutor:
    settings: TrainerSettings
    serving: ServingTarget
    registry: OnlineRegistry
    ledger: DecisionLedger

    def process(self, value: bytes | None) -> Handled:
        try:
            decision = ModelDecisionEventV1.from_bytes(value or b"")
        except ValidationError as exc:
            # Nothing trustworthy to act on: skipped, so it cannot block the decisions after it.
            logger.error("unreadable model decision skipped", extra={"errors": exc.error_count()})
            return Handled("invalid", None, "unreadable record")
        return self.handle(decision)

    def handle(self, decision: ModelDecisionEventV1) -> Handled:
        extra = {
            "decision_id": decision.decision_id,
            "action": decision.action,
            "challenger_version": decision.challenger_version,
        }
        if decision.decided_by != "policy":
            return Handled("operator", decision, "an operator's decision is in force when published")
        if decision.action not in ("promote", "rollback"):
            return Handled("ignored", decision, f"{decision.action} needs no action")
        entry = self.ledger.get(decision.decision_id)
        if entry is not None and entry.state == "done":
            logger.info("decision already carried out: skipped", extra={**extra, "outcome": entry.outcome})
            return Handled("duplicate", decision, f"carried out before ({entry.outcome})")
        if entry is None:
            stale = self._stale(decision)
            if stale:
                logger.warning("stale decision skipped", extra={**extra, "reason": stale})
                return Handled("stale", decision, stale)
            previous = self.serving.serving()
            self.ledger.start(
                decision.decision_id,
                action=decision.action,
                challenger_version=decision.challenger_version,
                previous_served=previous,
            )
        else:
            previous = entry.previous_served
            logger.info("resuming a decision started before", extra=extra)
        if decision.action == "promote":
            return self._promote(decision, previous)
        return self._rollback(decision)

    def _stale(self, decision: ModelDecisionEventV1) -> str:
        state = rollout_state(self.settings)
        if not state.active or state.challenger_version != decision.challenger_version:
            now = f"{state.mode} of version {state.challenger_version}" if state.active else "no rollout"
            return f"the rollout is {now}, not of version {decision.challenger_version}"
        started = datetime.fromtimestamp((challenger_dir(self.settings) / ROLLOUT_FILE).stat().st_mtime, UTC)
        if decision.decided_at < started:
            return "the rollout in force started after the decision"
        served = serving_version(self.settings)
        if decision.action == "promote" and decision.champion_version != str(served):
            return (
                f"version {served} is served now, not {decision.champion_version} the decision compared with"
            )
        return ""

    def _stop_if_still(self, decision: ModelDecisionEventV1) -> None:
        # On a resume the rollout may be gone already (stopped by this decision before a crash).
        if rollout_state(self.settings).challenger_version == decision.challenger_version:
            stop_rollout(self.settings)

    def _promote(self, decision: ModelDecisionEventV1, previous: str | None) -> Handled:
        version = decision.challenger_version
        try:
            switch_serving(self.serving, version, back_to=previous)
        except ServingError as exc:
            # Switched back: the champion serves, the rollout goes on; the operator decides what next.
            logger.error(
                "promotion failed: the challenger did not come up, the champion serves again",
                extra={"decision_id": decision.decision_id, "challenger_version": version, "error": str(exc)},
            )
            self.ledger.finish(decision.decision_id, "failed")
            return Handled("failed", decision, str(exc))
        self._stop_if_still(decision)
        registry_version = self.registry.registry_version(version)
        if registry_version is None:
            logger.warning(
                "promoted version has no registry entry: nothing recorded in MLflow",
                extra={"challenger_version": version},
            )
        else:
            self.registry.record_promotion(
                registry_version, decision, served=version, previous_served=previous
            )
        self.ledger.finish(decision.decision_id, "promoted")
        logger.info(
            "challenger promoted by the online policy",
            extra={
                "decision_id": decision.decision_id,
                "served_version": version,
                "previous_served": previous,
                "registry_version": registry_version,
            },
        )
        return Handled("promoted", decision, decision.reason, registry_version)

    def _rollback(self, decision: ModelDecisionEventV1) -> Handled:
        self._stop_if_still(decision)
        registry_version = self.registry.registry_version(decision.challenger_version)
        if registry_version is None:
            logger.warning(
                "rolled-back version has no registry entry: nothing recorded in MLflow",
                extra={"challenger_version": decision.challenger_version},
            )
        else:
            self.registry.record_rollback(registry_version, decision)
        self.ledger.finish(decision.decision_id, "rolled_back")
        logger.info(
            "challenger rolled back by the online policy",
            extra={
                "decision_id": decision.decision_id,
                "challenger_version": decision.challenger_version,
                "registry_version": registry_version,
            },
        )
        return Handled("rolled_back", decision, decision.reason, registry_version)
