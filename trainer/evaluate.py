"""``cxr-triage evaluate``: score a CheXpert-layout folder with a registered (or local) ONNX model.

Scoring runs the ONNX file with ONNX Runtime on ``cxr_triage.imaging`` tensors: what Triton would serve, not
the PyTorch model it came from. The threshold is the model's own (chosen on its validation split at training
time) so sensitivity and specificity here say how that operating point holds on other data.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

from cxr_triage.labels import LABELS
from cxr_triage.model.export import read_metadata
from cxr_triage.model.legacy import takes_float_input, upgrade_float_input
from cxr_triage.model.signature import ModelRejected, read_signature
from cxr_triage.priority import priorities
from trainer import metrics, tracking
from trainer.data.dataset import CXRDataset
from trainer.data.manifest import Manifest, Verify, build_manifest
from trainer.data.open import open_sources
from trainer.data.policies import UncertaintyPolicy
from trainer.data.splits import Split, select
from trainer.errors import RegistryError
from trainer.export_model import onnx_probabilities, session
from trainer.settings import TrainerSettings
from trainer.slices import evaluate_slices
from trainer.train import truth_of


@dataclass(frozen=True)
class ScoredModel:
    onnx_path: Path
    uri: str
    model_version: str
    threshold: float | None
    input_size: int


def resolve_model(uri: str | None, *, settings: TrainerSettings, workdir: Path) -> ScoredModel:
    """A ``models:/`` URI (default: the champion), another MLflow artifact URI, or a local .onnx file."""
    uri = uri or f"models:/{settings.registered_model}@{tracking.CHAMPION}"
    ref = tracking.parse_models_uri(uri)
    if ref is not None:
        client = tracking.client_for(settings.mlflow_tracking_uri)
        version = tracking.resolve(client, ref)
        path = tracking.download_onnx(client, version, workdir)
        label = str(version.version)
    elif ":/" not in uri:  # a local file or folder, not an MLflow artifact URI (runs:/, mlflow-artifacts:/)
        path = Path(uri) / tracking.ONNX_FILE if Path(uri).is_dir() else Path(uri)
        label = ""
    else:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=str(workdir), tracking_uri=settings.mlflow_tracking_uri
        )
        path = Path(local) / tracking.ONNX_FILE if Path(local).is_dir() else Path(local)
        label = ""
    return scored_model(path, uri=uri, model_version=label)


def scored_model(path: Path, *, uri: str, model_version: str) -> ScoredModel:
    """What scoring needs from an ONNX file: its threshold (``cxr.*`` metadata) and its graph's input size."""
    if not path.is_file():
        raise RegistryError(f"no ONNX model at {uri}")
    if takes_float_input(path):  # registered before models took pixels: score it as it would be served
        path = upgrade_float_input(path, path.with_name(f"{path.stem}.pixels.onnx"))
    try:
        input_size = read_signature(path).input_size
    except ModelRejected as exc:
        raise RegistryError(f"{uri}: {exc}") from exc
    meta = read_metadata(path)
    threshold = float(meta["cxr.threshold"]) if "cxr.threshold" in meta else None
    version = model_version or meta.get("cxr.mlflow_run_id", "") or path.name
    return ScoredModel(path, uri, version, threshold, input_size)


def score(model: ScoredModel, manifest: Manifest, *, batch_size: int = 16) -> np.ndarray:
    """Probabilities [N, 14] from ONNX Runtime, streamed in batches (memory stays flat on large folders)."""
    dataset = CXRDataset(manifest, size=model.input_size, policy=UncertaintyPolicy.IGNORE)
    sess = session(model.onnx_path)
    chunks = []
    for start in range(0, len(dataset), batch_size):
        images = np.stack([dataset.pixels(i) for i in range(start, min(start + batch_size, len(dataset)))])
        chunks.append(onnx_probabilities(sess, images, batch_size))
    return np.concatenate(chunks)


def summary(report: metrics.Report) -> dict[str, Any]:
    op = report.operating
    return {
        "n": report.n,
        "n_abnormal": report.n_abnormal,
        "n_normal": report.n_normal,
        "auroc_macro": metrics.json_number(report.auroc_macro),
        "auroc_abnormal": metrics.json_number(report.auroc_abnormal),
        "auroc_competition": metrics.json_number(report.auroc_competition),
        "auroc_per_label": {k: metrics.json_number(v) for k, v in report.auroc_per_label.items()},
        "sensitivity": metrics.json_number(op.sensitivity),
        "specificity": metrics.json_number(op.specificity),
        "precision": metrics.json_number(op.precision),
        "f1": metrics.json_number(op.f1),
        "threshold": metrics.json_number(op.threshold),
    }


def evaluate_manifest(
    model: ScoredModel, manifest: Manifest, *, target_sensitivity: float
) -> tuple[dict[str, Any], np.ndarray]:
    """The JSON-ready result (overall and per source) and the probabilities, in manifest order."""
    probabilities = score(model, manifest)
    truth, abnormal = truth_of(manifest), manifest.abnormal()
    threshold = model.threshold
    overall = metrics.report(
        probabilities, truth, abnormal, threshold=threshold, target_sensitivity=target_sensitivity
    )
    threshold = overall.operating.threshold  # the same threshold for every source below
    per_source = {}
    sources = np.array(manifest.sources())
    for source in sorted(set(sources)):
        rows = sources == source
        part = metrics.report(probabilities[rows], truth[rows], abnormal[rows], threshold=threshold)
        per_source[source] = summary(part)
    result = {
        **summary(overall),
        "threshold_source": "model" if model.threshold is not None else "chosen-on-this-data",
        "model_version": model.model_version,
        "model_uri": model.uri,
        "per_source": per_source,
        "slices": evaluate_slices(metrics.abnormal_score(probabilities), manifest, threshold=threshold),
    }
    return result, probabilities


def write_predictions(path: Path, rel_paths: Iterable[str], probabilities: np.ndarray) -> None:
    """One row per image: ``Path`` as in the label file, the 14 probabilities in label order, and the
    worklist ``priority`` they give (``cxr_triage.priority``, what orders the radiologists' worklist)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Path", *LABELS, "priority"])
        for rel, row, value in zip(rel_paths, probabilities, priorities(probabilities), strict=True):
            writer.writerow([rel, *(f"{p:.6f}" for p in row), f"{value:.6f}"])


def evaluate(
    *,
    data: Path,
    model_uri: str | None,
    settings: TrainerSettings,
    split: Split = Split.ALL,
    workdir: Path,
    predictions_out: Path | None = None,
) -> dict[str, Any]:
    manifest = build_manifest(open_sources([data]), verify=Verify.DECODE)
    manifest = select(manifest, split, **settings.split_fractions())
    model = resolve_model(model_uri, settings=settings, workdir=workdir)
    result, probabilities = evaluate_manifest(model, manifest, target_sensitivity=settings.target_sensitivity)
    if predictions_out is not None:
        write_predictions(predictions_out, (e.rel_path for e in manifest.examples), probabilities)
    return {"data": str(data), "split": split.value, **result}
