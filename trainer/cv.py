"""Patient-level K-fold cross-validation: how training recipes are compared here.

One ~100-image validation split is too noisy to choose a recipe on, so each recipe is trained K times from
scratch, each time on K-1 folds, and scored on the held-out fold with its final weights.

- Folds: scikit-learn's ``StratifiedGroupKFold``, grouped by patient (no patient is in two folds) and
  stratified on source x abnormal, so every fold holds each source's share of normal and abnormal studies.
- Reported per fold, then as mean and sd over folds: abnormal-vs-normal AUROC (what orders the worklist),
  macro AUROC over the labels with both classes in the fold, both again per source (a source whose fold is
  all abnormal, like MHH, has no abnormal AUROC of its own), and sensitivity / specificity at a threshold
  chosen for the target sensitivity on the *other* folds' out-of-fold scores, never on the fold it is
  measured on. The pooled out-of-fold scores give the same figures once more, over all studies.
- Test-time augmentation is measured beside, at no training cost: ``tta_*`` are the AUROCs of the average
  over centred zooms (``trainer.predict.TTA_ZOOMS``) of each held-out image.
- MLflow: one parent run with the summary, one child run per fold with its epochs.

Studies a source keeps for testing (its own ``test`` split) are left out, as in training.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import StratifiedGroupKFold

from trainer import metrics, tracking
from trainer.checkpoints import load_model
from trainer.config import TrainConfig
from trainer.data.dataset import CXRDataset
from trainer.data.manifest import Manifest, Verify, build_manifest
from trainer.data.open import open_sources
from trainer.data.splits import Split, assign
from trainer.errors import DataError
from trainer.models import servable
from trainer.predict import predict, predict_tta
from trainer.ray_cluster import ray_session
from trainer.settings import TrainerSettings
from trainer.train import fit, metric_list, truth_of

logger = logging.getLogger(__name__)

SUMMARY_KEYS = (
    "auroc_abnormal", "auroc_macro", "sensitivity", "specificity", "tta_auroc_abnormal", "tta_auroc_macro",
)  # fmt: skip


def fold_indices(manifest: Manifest, k: int, *, seed: int) -> list[np.ndarray]:
    """The held-out indices of each of ``k`` folds (patient-grouped, stratified on source x abnormal)."""
    patients = [e.patient_id for e in manifest.examples]
    if k < 2:
        raise DataError(f"cross-validation needs at least 2 folds, got {k}")
    if k > len(set(patients)):
        raise DataError(f"{k} folds need at least {k} patients; the data has {len(set(patients))}")
    strata = [
        f"{e.source}|{'unknown' if math.isnan(e.abnormal) else int(e.abnormal)}" for e in manifest.examples
    ]
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed % 2**32)
    return [held for _, held in splitter.split(np.zeros(len(manifest)), strata, groups=patients)]


@dataclass(frozen=True)
class FoldScores:
    """One fold's figures; per source as {source: {metric: value}} (NaN where undefined)."""

    fold: int
    n: int
    values: dict[str, float]
    per_source: dict[str, dict[str, float]]


def score(
    probabilities: np.ndarray,
    manifest: Manifest,
    *,
    threshold: float,
    fold: int = -1,
    tta: np.ndarray | None = None,
) -> FoldScores:
    """AUROCs and the operating point at ``threshold``, overall and per source (and the AUROCs of the
    test-time-augmented probabilities ``tta``, as ``tta_*``)."""

    def figures(rows: np.ndarray) -> dict[str, float]:
        part = manifest.subset(rows.tolist())
        report = metrics.report(probabilities[rows], truth_of(part), part.abnormal(), threshold=threshold)
        augmented = {"tta_auroc_abnormal": math.nan, "tta_auroc_macro": math.nan}
        if tta is not None:
            with_tta = metrics.report(tta[rows], truth_of(part), part.abnormal(), threshold=threshold)
            augmented = {
                "tta_auroc_abnormal": with_tta.auroc_abnormal,
                "tta_auroc_macro": with_tta.auroc_macro,
            }
        return {
            **augmented,
            "n": float(len(rows)),
            "n_abnormal": float(report.n_abnormal),
            "n_normal": float(report.n_normal),
            "auroc_abnormal": report.auroc_abnormal,
            "auroc_macro": report.auroc_macro,
            "sensitivity": report.operating.sensitivity,
            "specificity": report.operating.specificity,
            "mean_priority": float(np.mean(metrics.abnormal_score(probabilities[rows]))),
        }

    sources = np.array(manifest.sources())
    return FoldScores(
        fold=fold,
        n=len(manifest),
        values=figures(np.arange(len(manifest))),
        per_source={s: figures(np.flatnonzero(sources == s)) for s in sorted(set(sources))},
    )


def nested_thresholds(
    scores: np.ndarray, abnormal: np.ndarray, folds: Sequence[np.ndarray], target: float
) -> list[float]:
    """For each fold, the threshold reaching ``target`` sensitivity on the out-of-fold scores of the others."""
    chosen = []
    for held in folds:
        others = np.setdiff1d(np.arange(len(scores)), held)
        chosen.append(metrics.threshold_for_sensitivity(abnormal[others], scores[others], target))
    return chosen


def mean_sd(folds: Sequence[FoldScores]) -> dict[str, dict[str, float]]:
    """{metric: {"mean", "sd", "folds"}} overall and as ``<source>/<metric>``, over the folds where defined."""
    table: dict[str, list[float]] = {}
    for fold in folds:
        for key in SUMMARY_KEYS:
            table.setdefault(key, []).append(fold.values[key])
            for source, figures in fold.per_source.items():
                table.setdefault(f"{source}/{key}", []).append(figures[key])
    result = {}
    for key, column in table.items():
        defined = np.array([v for v in column if not math.isnan(v)])
        if defined.size:
            sd = float(defined.std(ddof=1)) if defined.size > 1 else math.nan
            result[key] = {"mean": float(defined.mean()), "sd": sd, "folds": float(defined.size)}
    return result


@dataclass(frozen=True)
class CVResult:
    run_id: str
    k: int
    folds: list[FoldScores]
    summary: dict[str, dict[str, float]]
    pooled: FoldScores
    fold_seconds: list[float]

    def to_dict(self) -> dict[str, Any]:
        def clean(values: dict[str, float]) -> dict[str, float | None]:
            return {k: metrics.json_number(v, 4) for k, v in values.items()}

        def fold_dict(f: FoldScores) -> dict[str, Any]:
            return {
                "fold": f.fold,
                **clean(f.values),
                "per_source": {s: clean(v) for s, v in f.per_source.items()},
            }

        return {
            "run_id": self.run_id,
            "cv": self.k,
            "summary": {k: clean(v) for k, v in self.summary.items()},
            "pooled": fold_dict(self.pooled),
            "folds": [fold_dict(f) for f in self.folds],
            "fold_seconds": [round(s, 1) for s in self.fold_seconds],
        }


def cv_manifest(data: Sequence[Path], verify: Verify, settings: TrainerSettings) -> Manifest:
    manifest = build_manifest(open_sources(data), verify=verify)
    splits = assign(manifest, **settings.split_fractions())
    return manifest.subset([i for i, s in enumerate(splits) if s is not Split.TEST])


def run_cv(
    *,
    cfg: TrainConfig,
    k: int,
    data: Sequence[Path],
    settings: TrainerSettings,
    experiment: str | None = None,
    run_name: str | None = None,
    verify: Verify = Verify.DECODE,
    tags: dict[str, str] | None = None,
) -> CVResult:
    """Train ``cfg`` on each of ``k`` folds' complements and score the held-out folds (see the module)."""
    manifest = cv_manifest(data, verify, settings)
    folds = fold_indices(manifest, k, seed=settings.split_seed)
    client = tracking.client_for(settings.mlflow_tracking_uri)
    experiment_id = tracking.ensure_experiment(client, experiment or settings.mlflow_experiment)
    parent = client.create_run(experiment_id, run_name=run_name, tags={"cxr.cv": str(k), **(tags or {})})
    parent_id = parent.info.run_id
    probabilities = np.full((len(manifest), manifest.raw_labels().shape[1]), np.nan, dtype=np.float32)
    augmented = probabilities.copy()
    fold_seconds: list[float] = []
    try:
        tracking.log_params(
            client, parent_id,
            {**cfg.model_dump(mode="json"), "cv_folds": k, "n": len(manifest),
             "n_patients": len({e.patient_id for e in manifest.examples}),
             "data": ",".join(str(d) for d in data), "split_seed": settings.split_seed},
        )  # fmt: skip
        cpus = max(settings.ray_num_cpus, cfg.num_workers * cfg.cpus_per_worker)
        with ray_session(settings, num_cpus=cpus) if cfg.num_workers else contextlib.nullcontext():
            for index, held in enumerate(_progress(folds, cfg.progress)):
                started = time.perf_counter()
                probabilities[held], augmented[held] = _train_fold(
                    cfg, manifest, held, index, settings=settings, client=client,
                    experiment_id=experiment_id, parent_id=parent_id, tags=tags,
                )  # fmt: skip
                fold_seconds.append(time.perf_counter() - started)
        result = _summarise(parent_id, k, manifest, folds, probabilities, augmented, fold_seconds, settings)
        _log_summary(client, parent_id, result)
    except BaseException:
        tracking.finish_run(client, parent_id, "FAILED")
        raise
    tracking.finish_run(client, parent_id, "FINISHED")
    return result


def _train_fold(
    cfg: TrainConfig,
    manifest: Manifest,
    held: np.ndarray,
    index: int,
    *,
    settings: TrainerSettings,
    client: Any,
    experiment_id: str,
    parent_id: str,
    tags: dict[str, str] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Train on every fold but ``held``; return the final weights' probabilities on ``held``, plain and with
    test-time augmentation."""
    train = manifest.subset(np.setdiff1d(np.arange(len(manifest)), held).tolist())
    val = manifest.subset(held.tolist())
    child = client.create_run(
        experiment_id,
        run_name=f"fold {index + 1}",
        tags={"mlflow.parentRunId": parent_id, "cxr.fold": str(index + 1), **(tags or {})},
    )
    name = f"cv-{parent_id}-fold{index + 1}"
    try:
        checkpoint, _ = fit(
            cfg, train=train, val=val, settings=settings, name=name,
            tracking_info={"tracking_uri": settings.mlflow_tracking_uri, "run_id": child.info.run_id},
            resume_from=None,
        )  # fmt: skip
        model, spec = load_model(checkpoint)
        dataset = CXRDataset(val, size=spec.input_size, policy=cfg.policy)
        network, cpu = servable(model).eval(), torch.device("cpu")
        held_probabilities, _ = predict(network, dataset, batch_size=cfg.val_batch_size, device=cpu)
        held_tta = predict_tta(network, dataset, batch_size=cfg.val_batch_size, device=cpu)
    except BaseException:
        tracking.finish_run(client, child.info.run_id, "FAILED")
        raise
    finally:
        # A fold's checkpoints are not kept: the recipe, not the fold's weights, is what CV compares.
        shutil.rmtree(settings.checkpoints_dir / name, ignore_errors=True)
    tracking.finish_run(client, child.info.run_id, "FINISHED")
    return held_probabilities, held_tta


def _summarise(
    run_id: str,
    k: int,
    manifest: Manifest,
    folds: list[np.ndarray],
    probabilities: np.ndarray,
    augmented: np.ndarray,
    fold_seconds: list[float],
    settings: TrainerSettings,
) -> CVResult:
    scores = metrics.abnormal_score(probabilities)
    abnormal = manifest.abnormal()
    thresholds = nested_thresholds(scores, abnormal, folds, settings.target_sensitivity)
    per_fold = [
        score(
            probabilities[held], manifest.subset(held.tolist()), threshold=t, fold=i + 1, tta=augmented[held]
        )
        for i, (held, t) in enumerate(zip(folds, thresholds, strict=True))
    ]
    pooled_threshold = metrics.threshold_for_sensitivity(abnormal, scores, settings.target_sensitivity)
    pooled = score(probabilities, manifest, threshold=pooled_threshold, fold=0, tta=augmented)
    return CVResult(run_id, k, per_fold, mean_sd(per_fold), pooled, fold_seconds)


def _metric_key(key: str) -> str:
    return "".join(c if c.isalnum() or c in "_-./" else "_" for c in key)


def _log_summary(client: Any, run_id: str, result: CVResult) -> None:
    overall = {
        **{f"cv_{key}_{stat}": stats[stat] for key, stats in result.summary.items() for stat in ("mean", "sd")},
        **{f"pooled_{key}": value for key, value in result.pooled.values.items()},
        **{f"pooled_{source}/{key}": value for source, values in result.pooled.per_source.items()
           for key, value in values.items()},
        "cv_seconds": float(sum(result.fold_seconds)),
    }  # fmt: skip
    batch = metric_list({_metric_key(k): v for k, v in overall.items()}, step=0)
    for fold in result.folds:
        batch += metric_list({f"fold_{key}": fold.values[key] for key in SUMMARY_KEYS}, step=fold.fold)
    for start in range(0, len(batch), 900):  # MLflow takes at most 1000 metrics a call
        client.log_batch(run_id, metrics=batch[start : start + 900])


def _progress(folds: list[np.ndarray], enabled: bool) -> Any:
    if not enabled:
        return folds
    from tqdm import tqdm

    return tqdm(folds, desc="folds", unit="fold", file=sys.stderr)
