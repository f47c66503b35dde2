"""The training driver: data -> MLflow run -> Ray ``TorchTrainer`` -> evaluation, ONNX export, registration.

The per-worker loop lives in ``trainer.loop``; this module only prepares what the workers get (validated
manifests, a config, the MLflow run to log into) and handles what comes back (the last checkpoint).
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlflow.tracking import MlflowClient
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from cxr_triage.labels import LABELS, NO_FINDING
from trainer import calibration, metrics, plots, tracking
from trainer.checkpoints import load_model
from trainer.config import TrainConfig
from trainer.data.dataset import CXRDataset
from trainer.data.manifest import Manifest, Verify, build_manifest
from trainer.data.open import open_sources
from trainer.data.policies import UncertaintyPolicy
from trainer.data.sources import ExampleSource
from trainer.data.splits import Split, select
from trainer.epoch_progress import epoch_bar
from trainer.errors import TrainerError
from trainer.export_model import export_trained, onnx_probabilities, parity, session
from trainer.loop import train_loop_per_worker
from trainer.models import servable
from trainer.predict import predict
from trainer.ray_cluster import framework_output, ray_session
from trainer.settings import TrainerSettings
from trainer.tiers import choose_tiers

logger = logging.getLogger(__name__)

PARITY_IMAGES = 16
INT8_CALIBRATION_IMAGES = 32


class TrainingFailed(TrainerError):
    """Ray Train reported an error; the message carries the worker's."""


@dataclass(frozen=True)
class TrainOutcome:
    run_id: str
    experiment_id: str
    model_version: str | None
    checkpoint: Path
    validation: metrics.Report
    parity_max_abs_diff: float
    train_seconds: float
    total_seconds: float
    history: list[dict[str, float]]


def load_split_data(
    data: Sequence[Path],
    settings: TrainerSettings,
    *,
    verify: Verify = Verify.DECODE,
    sources: Sequence[ExampleSource] = (),
) -> tuple[Manifest, Manifest]:
    """The training and validation manifests of ``data`` and ``sources`` (patient-level split, checked first).

    Examples of a source's ``test`` split (the feedback's held-out slice) are in neither.
    """
    manifest = build_manifest([*open_sources(data), *sources], verify=verify)
    fractions = settings.split_fractions()
    return select(manifest, Split.TRAIN, **fractions), select(manifest, Split.VAL, **fractions)


def truth_of(manifest: Manifest) -> np.ndarray:
    """Labels for metrics: 1 / 0 known, -1 and blank unknown (NaN)."""
    raw = manifest.raw_labels()
    return np.where(raw == -1.0, np.nan, raw)


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def _data_params(train: Manifest, val: Manifest, data: Sequence[Path]) -> dict[str, Any]:
    return {
        "data": ",".join(str(d) for d in data),
        "n_train": len(train),
        "n_val": len(val),
        "n_train_patients": len({e.patient_id for e in train.examples}),
        "sources": ",".join(sorted(set(train.sources()) | set(val.sources()))),
    }


def fit(
    cfg: TrainConfig,
    *,
    train: Manifest,
    val: Manifest,
    settings: TrainerSettings,
    name: str,
    tracking_info: dict[str, str] | None,
    resume_from: Path | None,
) -> tuple[Path, list[dict[str, float]]]:
    """Run the Ray Train job; return (last checkpoint folder, per-epoch history)."""
    storage = settings.checkpoints_dir
    storage.mkdir(parents=True, exist_ok=True)
    # With Ray workers the driver draws the epoch bar (``epoch_progress``): their own could not reach it.
    worker_cfg = cfg.model_copy(update={"progress": False}) if cfg.num_workers else cfg
    loop_config: dict[str, Any] = {
        "train": worker_cfg.model_dump(mode="json"),
        "train_data": train,
        "val_data": val,
        "tracking": tracking_info,
        "resume_from": str(resume_from) if resume_from else None,
    }
    if cfg.num_workers == 0:  # Ray Train local mode keeps only a reference to each checkpoint
        loop_config["local_checkpoint_root"] = str(storage / name)
    trainer = TorchTrainer(
        # Ray Train V2 returns rank 0's return value (Result.return_value); its annotation still says None.
        train_loop_per_worker,  # type: ignore[arg-type]
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=0),
            # Train V2's RunConfig (the one used at run time); the stubs still describe V1's.
            logging_config=LoggingConfig(log_level=_ray_train_log_level()),  # type: ignore[call-arg]
        ),
    )
    with epoch_bar(tracking_info, epochs=cfg.epochs, enabled=cfg.progress and cfg.num_workers > 0):
        result = trainer.fit()
    if result.error is not None:
        raise TrainingFailed(f"training failed: {result.error}") from result.error
    if result.checkpoint is None:
        raise TrainingFailed("training reported no checkpoint")
    return Path(result.checkpoint.path), list(getattr(result, "return_value", None) or [])


def _ray_train_log_level() -> str:
    """Ray Train logs each checkpoint and worker group at INFO: shown with the rest of Ray's output, else only
    in Ray's own files (which keep every level)."""
    return "DEBUG" if framework_output() else "WARNING"


def run_training(
    *,
    cfg: TrainConfig,
    data: Sequence[Path],
    settings: TrainerSettings,
    experiment: str | None = None,
    run_name: str | None = None,
    resume_from: Path | None = None,
    register: bool = True,
    int8: bool = False,
    verify: Verify = Verify.DECODE,
    tags: dict[str, str] | None = None,
    sources: Sequence[ExampleSource] = (),
    params: dict[str, Any] | None = None,
) -> TrainOutcome:
    """Train, evaluate on the validation split, export and check ONNX, register as ``challenger``.

    ``sources`` are data sources beside the ``data`` folders (the feedback store); ``params`` are logged
    with the run's own.
    """
    started = time.perf_counter()
    train, val = load_split_data(data, settings, verify=verify, sources=sources)
    client = tracking.client_for(settings.mlflow_tracking_uri)
    experiment_id = tracking.ensure_experiment(client, experiment or settings.mlflow_experiment)
    run = client.create_run(
        experiment_id, run_name=run_name, tags={"cxr.git_commit": _git_commit(), **(tags or {})}
    )
    run_id = run.info.run_id
    try:
        tracking.log_params(
            client,
            run_id,
            {**cfg.model_dump(mode="json"), **_data_params(train, val, data), "val_fraction": settings.val_fraction,
             "split_seed": settings.split_seed, "target_sensitivity": settings.target_sensitivity,
             "resumed_from": str(resume_from or ""), **(params or {})},
        )  # fmt: skip
        fit_started = time.perf_counter()
        # Local mode (no workers) runs the loop in this process: no cluster to start.
        cpus = max(settings.ray_num_cpus, cfg.num_workers * cfg.cpus_per_worker)
        with ray_session(settings, num_cpus=cpus) if cfg.num_workers else contextlib.nullcontext():
            checkpoint, history = fit(
                cfg,
                train=train,
                val=val,
                settings=settings,
                name=f"run-{run_id}",
                tracking_info={"tracking_uri": settings.mlflow_tracking_uri, "run_id": run_id},
                resume_from=resume_from,
            )
        train_seconds = time.perf_counter() - fit_started
        outcome = _finish(
            client=client, run_id=run_id, cfg=cfg, val=val, train=train, checkpoint=checkpoint,
            settings=settings, register=register, int8=int8,
        )  # fmt: skip
        total_seconds = time.perf_counter() - started
        client.log_metric(run_id, "train_seconds", train_seconds)
        client.log_metric(run_id, "total_seconds", total_seconds)
    except BaseException:
        tracking.finish_run(client, run_id, "FAILED")
        raise
    tracking.finish_run(client, run_id, "FINISHED")
    report, diff, version = outcome
    logger.info(
        "training finished", extra={"run_id": run_id, "model_version": version, "seconds": total_seconds}
    )
    return TrainOutcome(
        run_id=run_id,
        experiment_id=experiment_id,
        model_version=version,
        checkpoint=checkpoint,
        validation=report,
        parity_max_abs_diff=diff,
        train_seconds=train_seconds,
        total_seconds=total_seconds,
        history=history,
    )


def _finish(
    *,
    client: MlflowClient,
    run_id: str,
    cfg: TrainConfig,
    val: Manifest,
    train: Manifest,
    checkpoint: Path,
    settings: TrainerSettings,
    register: bool,
    int8: bool,
) -> tuple[metrics.Report, float, str | None]:
    """Evaluate the last checkpoint, log plots and metrics, export + parity-check ONNX, register it."""
    model, spec = load_model(checkpoint)
    model = servable(model).eval()
    val_set = CXRDataset(val, size=spec.input_size, policy=cfg.policy)
    raw, _ = predict(model, val_set, batch_size=cfg.val_batch_size, device=torch.device("cpu"))
    truth, abnormal = truth_of(val), val.abnormal()
    # Calibrated on the validation split, where the thresholds are chosen too; the gate scores another split.
    temperatures = calibration.fit_temperatures(raw, truth)
    calibration.fold_into_model(model, temperatures)
    probabilities = calibration.apply_temperatures(raw, temperatures)
    report = metrics.report(probabilities, truth, abnormal, target_sensitivity=settings.threshold_sensitivity)
    normal_column = LABELS.index(NO_FINDING)
    calibration_metrics = {
        "val_nll_uncalibrated": calibration.mean_nll(raw, truth),
        "val_nll": calibration.mean_nll(probabilities, truth),
        "val_ece_abnormal_uncalibrated": calibration.expected_calibration_error(
            1 - raw[:, normal_column], abnormal
        ),
        "val_ece_abnormal": calibration.expected_calibration_error(
            1 - probabilities[:, normal_column], abnormal
        ),
    }
    tiers = choose_tiers(
        metrics.abnormal_score(probabilities),
        truth,
        operating_threshold=report.operating.threshold,
        target_ppv=settings.critical_ppv,
    )
    final = {
        f"final_{k}": v
        for k, v in {
            **report.flat("val_"),
            "val_tier_urgent": tiers.urgent,
            "val_tier_critical": tiers.critical,
            "val_tier_critical_ppv": tiers.critical_ppv,
            **calibration_metrics,
        }.items()
    }
    client.log_batch(run_id, metrics=metric_list(final, step=cfg.epochs))
    # Plots and ONNX files go to MLflow; the local copies are removed, so retraining does not fill the disk.
    with tempfile.TemporaryDirectory(prefix="cxr-train-") as tmp:
        work = Path(tmp)
        for png in plots.roc_pngs(probabilities, truth, abnormal, report, work / "plots"):
            client.log_artifact(run_id, str(png), "plots")
        client.log_artifacts(run_id, str(checkpoint), "checkpoint")

        onnx_path = work / "model.onnx"
        exported = export_trained(
            model,
            onnx_path,
            input_size=spec.input_size,
            architecture=spec.architecture,
            metadata={
                "cxr.threshold": repr(report.operating.threshold),
                "cxr.target_sensitivity": str(settings.target_sensitivity),
                "cxr.threshold_sensitivity": str(settings.threshold_sensitivity),
                "cxr.temperatures": json.dumps([round(float(t), 4) for t in temperatures]),
                **tiers.metadata(),
                "cxr.mlflow_run_id": run_id,
                "cxr.finetune": spec.finetune.value,
                "cxr.intensity": spec.intensity,
            },
        )
        images = np.stack([val_set.pixels(i) for i in range(min(PARITY_IMAGES, len(val_set)))])
        diff = parity(
            model, onnx_path, images
        )  # raises ParityError above 1e-4: such a file is never registered
        client.log_batch(
            run_id,
            metrics=metric_list(
                {"onnx_parity_max_abs_diff": diff, "onnx_export_seconds": exported.seconds}, step=cfg.epochs
            ),
        )
        if int8:
            _int8(client, run_id, onnx_path, train, val, spec.input_size, report, settings)
        version = None
        if register:
            example = images[:1]
            model_version = tracking.register_onnx(
                run_id=run_id,
                onnx_path=onnx_path,
                registered_model=settings.registered_model,
                example=example,
                example_output=onnx_probabilities(session(onnx_path), example),
                tags={
                    "cxr.threshold": repr(report.operating.threshold),
                    "cxr.input_size": str(spec.input_size),
                    "cxr.architecture": spec.architecture,
                    "cxr.val_auroc_macro": f"{report.auroc_macro:.4f}",
                    "cxr.val_sensitivity": f"{report.operating.sensitivity:.4f}",
                },
            )
            version = str(model_version.version)
            client.set_registered_model_alias(settings.registered_model, tracking.CHALLENGER, version)
            logger.info(
                "registered as challenger", extra={"model": settings.registered_model, "version": version}
            )
    return report, diff, version


def _int8(
    client: MlflowClient,
    run_id: str,
    onnx_path: Path,
    train: Manifest,
    val: Manifest,
    input_size: int,
    fp32: metrics.Report,
    settings: TrainerSettings,
) -> None:
    """Static INT8 variant (``cxr_triage.model.quantize``): logged with its AUROC change, never registered."""
    from cxr_triage.model.quantize import quantize_static_qdq

    calibration = [e.path for e in train.examples[:INT8_CALIBRATION_IMAGES]]
    int8_path = onnx_path.with_name("model.int8.onnx")
    quantize_static_qdq(onnx_path, int8_path, calibration, input_size)
    val_set = CXRDataset(val, size=input_size, policy=UncertaintyPolicy.IGNORE)
    images = np.stack([val_set.pixels(i) for i in range(len(val_set))])
    probabilities = onnx_probabilities(session(int8_path), images)
    report = metrics.report(
        probabilities, truth_of(val), val.abnormal(), threshold=fp32.operating.threshold,
        target_sensitivity=settings.target_sensitivity,
    )  # fmt: skip
    values = {
        "int8_val_auroc_macro": report.auroc_macro,
        "int8_auroc_macro_delta": report.auroc_macro - fp32.auroc_macro,
        "int8_val_sensitivity": report.operating.sensitivity,
    }
    client.log_batch(run_id, metrics=metric_list(values, step=0))
    client.log_artifact(run_id, str(int8_path), "int8")


def metric_list(values: dict[str, float], *, step: int) -> list[Any]:
    """MLflow metrics of ``values`` at ``step`` (NaN and infinite values left out: MLflow stores none)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in values.items() if np.isfinite(v)]
