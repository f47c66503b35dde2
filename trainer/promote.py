"""``cxr-triage promote`` / ``rollback``: registry aliases, the gate, and the serving seam, in that order.

Serving changes first, aliases second: if publishing fails the registry still names what is served. Each
champion version carries ``cxr.previous_champion`` (the version it replaced) and
``cxr.previous_served_version`` (what Triton served before it), so rollbacks walk back a chain.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from cxr_triage.priority import priorities
from trainer import gate, regression, tracking
from trainer.data.manifest import Manifest, Verify, build_manifest
from trainer.data.open import open_sources
from trainer.data.splits import Split, select
from trainer.errors import RegistryError, ServingError
from trainer.evaluate import ScoredModel, evaluate_manifest, scored_model
from trainer.serving import ServingTarget
from trainer.settings import TrainerSettings

logger = logging.getLogger(__name__)

PREVIOUS_CHAMPION = "cxr.previous_champion"
PREVIOUS_SERVED = "cxr.previous_served_version"
SERVED_VERSION = "cxr.served_version"


@dataclass(frozen=True)
class PromotionResult:
    promoted: bool
    challenger_version: str
    champion_version: str | None  # the champion before this call
    served_version: str | None
    gate: gate.GateResult
    challenger_eval: dict[str, Any]
    champion_eval: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RollbackResult:
    champion_version: str | None  # after the rollback (None: back to the pre-champion model)
    replaced_version: str
    served_version: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_eval_split(
    settings: TrainerSettings, *, data: Path | None = None, split: Split | None = None
) -> Manifest:
    """The fixed evaluation split of the gate (settings: ``eval_data`` / ``eval_split``)."""
    manifest = build_manifest(open_sources([data or settings.eval_data]), verify=Verify.DECODE)
    chosen = split or Split(settings.eval_split)
    return select(manifest, chosen, **settings.split_fractions())


def _scored(
    client: MlflowClient, settings: TrainerSettings, version: ModelVersion, workdir: Path
) -> ScoredModel:
    path = tracking.download_onnx(client, version, workdir / f"v{version.version}")
    uri = f"models:/{version.name}/{version.version}"
    return scored_model(path, uri=uri, model_version=str(version.version))


def promote(
    *,
    client: MlflowClient,
    settings: TrainerSettings,
    serving: ServingTarget,
    evaluation: Manifest,
) -> PromotionResult:
    """Gate the challenger against the champion on ``evaluation``; if it passes, serve it and make it champion."""
    name = settings.registered_model
    challenger = tracking.version_by_alias(client, name, tracking.CHALLENGER)
    if challenger is None:
        raise RegistryError(f"registered model {name!r} has no {tracking.CHALLENGER!r}: train one first")
    champion = tracking.version_by_alias(client, name, tracking.CHAMPION)
    if champion is not None and champion.version == challenger.version:
        raise RegistryError(f"version {challenger.version} is already the champion")
    with tempfile.TemporaryDirectory(prefix="cxr-promote-") as tmp:
        work = Path(tmp)
        challenger_model = _scored(client, settings, challenger, work)
        challenger_eval, challenger_probabilities = evaluate_manifest(
            challenger_model, evaluation, target_sensitivity=settings.target_sensitivity
        )
        champion_eval, check = None, None
        if champion is not None:
            champion_eval, champion_probabilities = evaluate_manifest(
                _scored(client, settings, champion, work),
                evaluation,
                target_sensitivity=settings.target_sensitivity,
            )
            check = _regression_check(
                client, name, evaluation, challenger_eval, challenger_probabilities, champion_eval,
                champion_probabilities,
            )  # fmt: skip
            challenger_eval["regression_set"] = check.to_dict()
        result = gate.decide(
            challenger_auroc=_num(challenger_eval["auroc_macro"]),
            challenger_sensitivity=_num(challenger_eval["sensitivity"]),
            champion_auroc=_num(champion_eval["auroc_macro"]) if champion_eval else None,
            margin=settings.gate_margin,
            target_sensitivity=settings.target_sensitivity,
            challenger_auroc_abnormal=_num(challenger_eval["auroc_abnormal"]),
            min_auroc_abnormal=settings.gate_min_auroc_abnormal,
            regression=check,
        )
        _record_gate(client, challenger, result, challenger_eval, champion)
        served = None
        if result.passed:
            before = serving.serving()
            served = serving.add(challenger_model.onnx_path, metadata=_serving_metadata(challenger))
            _switch(serving, served, back_to=before)
            client.set_model_version_tag(
                name, challenger.version, PREVIOUS_CHAMPION, champion.version if champion else ""
            )
            client.set_model_version_tag(name, challenger.version, SERVED_VERSION, served)
            client.set_model_version_tag(name, challenger.version, PREVIOUS_SERVED, before or "")
            client.set_registered_model_alias(name, tracking.CHAMPION, challenger.version)
            client.delete_registered_model_alias(name, tracking.CHALLENGER)
            logger.info(
                "challenger promoted", extra={"version": challenger.version, "served_version": served}
            )
        else:
            logger.warning("challenger refused by the gate", extra={"reasons": list(result.reasons)})
    return PromotionResult(
        promoted=result.passed,
        challenger_version=str(challenger.version),
        champion_version=str(champion.version) if champion else None,
        served_version=served,
        gate=result,
        challenger_eval=challenger_eval,
        champion_eval=champion_eval,
    )


def rollback(*, client: MlflowClient, settings: TrainerSettings, serving: ServingTarget) -> RollbackResult:
    """Restore what was served before the champion's promotion (no gate: it was served before).

    Normally that is the previous champion: its Triton version is served again when the repository still
    holds it, else its ONNX file is added back from the registry. After the very first promotion there is no
    previous champion: the version served before (the untrained initial model) is served again and the
    champion alias is removed, so the registry says "no champion" as it did then.
    """
    name = settings.registered_model
    champion = tracking.version_by_alias(client, name, tracking.CHAMPION)
    if champion is None:
        raise RegistryError(f"registered model {name!r} has no champion to roll back")
    previous_id = champion.tags.get(PREVIOUS_CHAMPION, "")
    if not previous_id:
        before = champion.tags.get(PREVIOUS_SERVED, "")
        if not (before and serving.has(before)):
            raise RegistryError(f"champion version {champion.version} has nothing before it to roll back to")
        serving.serve(before)
        client.set_model_version_tag(name, champion.version, "cxr.rolled_back_at", _now())
        client.delete_registered_model_alias(name, tracking.CHAMPION)
        logger.info("rolled back to the model served before any champion", extra={"served": before})
        return RollbackResult(None, str(champion.version), before)
    previous = tracking.resolve(client, tracking.ModelRef(name, version=previous_id))
    served = previous.tags.get(SERVED_VERSION, "")
    if not (served and serving.has(served)):
        # Served before under a version that is gone (a cleaned repository): add it again.
        with tempfile.TemporaryDirectory(prefix="cxr-rollback-") as tmp:
            path = tracking.download_onnx(client, previous, Path(tmp))
            served = serving.add(path, metadata=_serving_metadata(previous))
    serving.serve(served)
    client.set_model_version_tag(name, previous.version, SERVED_VERSION, served)
    client.set_model_version_tag(name, champion.version, "cxr.rolled_back_at", _now())
    client.set_registered_model_alias(name, tracking.CHAMPION, previous.version)
    logger.info(
        "rolled back", extra={"champion": previous.version, "replaced": champion.version, "served": served}
    )
    return RollbackResult(str(previous.version), str(champion.version), served)


def _regression_check(
    client: MlflowClient,
    name: str,
    evaluation: Manifest,
    challenger_eval: dict[str, Any],
    challenger_probabilities: np.ndarray,
    champion_eval: dict[str, Any],
    champion_probabilities: np.ndarray,
) -> regression.Check:
    """Add the champion's errors on this split to the regression set, then compare both models on it."""

    def wrong(result: dict[str, Any], probabilities: np.ndarray) -> np.ndarray:
        threshold = _num(result["threshold"])
        return regression.errors(priorities(probabilities), evaluation.abnormal(), threshold)

    champion_wrong = wrong(champion_eval, champion_probabilities)
    keys = regression.study_keys(evaluation)
    updated = regression.merged(
        regression.load(client, name), [k for k, w in zip(keys, champion_wrong, strict=True) if w]
    )
    regression.save(client, name, updated)
    return regression.check(
        updated, evaluation, challenger_wrong=wrong(challenger_eval, challenger_probabilities),
        champion_wrong=champion_wrong,
    )  # fmt: skip


def _record_gate(
    client: MlflowClient,
    challenger: ModelVersion,
    result: gate.GateResult,
    evaluation: dict[str, Any],
    champion: ModelVersion | None,
) -> None:
    tags = {
        "cxr.gate": "passed" if result.passed else "failed",
        "cxr.gate_reasons": "; ".join(result.reasons) or "-",
        "cxr.gate_auroc_macro": str(evaluation["auroc_macro"]),
        "cxr.gate_sensitivity": str(evaluation["sensitivity"]),
        "cxr.gate_against": str(champion.version) if champion else "-",
        "cxr.gate_at": _now(),
    }
    for key, value in tags.items():
        client.set_model_version_tag(challenger.name, challenger.version, key, value)


def _switch(serving: ServingTarget, version: str, *, back_to: str | None) -> None:
    """Serve ``version``; if serving does not come up with it, serve ``back_to`` again and re-raise."""
    try:
        serving.serve(version)
    except ServingError:
        if back_to is not None:
            logger.error("new version failed to serve: switching back", extra={"version": back_to})
            serving.serve(back_to)
        raise


def _serving_metadata(version: ModelVersion) -> dict[str, str]:
    return {
        "registered_model": version.name,
        "registered_model_version": str(version.version),
        "mlflow_run_id": version.run_id or "",
    }


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def switch_serving(serving: ServingTarget, version: str, *, back_to: str | None) -> None:
    """Serve ``version`` as a promotion does: if it does not come up, ``back_to`` is served again and the
    ``ServingError`` re-raised (public for the rollout worker, which promotes an already-stored version)."""
    _switch(serving, version, back_to=back_to)


def record_champion(
    client: MlflowClient,
    version: ModelVersion,
    *,
    served: str,
    previous_served: str | None,
) -> None:
    """Make an already-served registry version the champion, with the chain ``rollback`` walks back.

    The tags and aliases ``promote`` writes after its switch. Safe to repeat: a version that is already the
    champion keeps the ``cxr.previous_champion`` it was given the first time.
    """
    name = version.name
    champion = tracking.version_by_alias(client, name, tracking.CHAMPION)
    if champion is None or champion.version != version.version:
        client.set_model_version_tag(
            name, version.version, PREVIOUS_CHAMPION, champion.version if champion else ""
        )
        client.set_model_version_tag(name, version.version, PREVIOUS_SERVED, previous_served or "")
    client.set_model_version_tag(name, version.version, SERVED_VERSION, served)
    client.set_registered_model_alias(name, tracking.CHAMPION, version.version)
    challenger = tracking.version_by_alias(client, name, tracking.CHALLENGER)
    if challenger is not None and challenger.version == version.version:
        client.delete_registered_model_alias(name, tracking.CHALLENGER)
