"""FP32 vs INT8 on the real labelled sample: speed, probability differences, abnormal-vs-normal AUROC.

The images are split once, deterministically: the first ``calibration`` (sorted by file name, which is a
content hash) calibrate the quantiser, the rest are the evaluation set. Speed is measured by alternating
the two sessions run by run, so that other processes on the machine slow both alike; the speed-up is the
median of the per-round ratios.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.profile import OpTime, profile_ops
from bench.raw import interleaved_runs, make_session
from bench.samples import LabelledImage, batch_of, load_tensors
from bench.stats import auroc
from cxr_triage.labels import LABELS, NO_FINDING
from cxr_triage.model.export import INPUT_NAME, OUTPUT_NAME, read_metadata
from cxr_triage.model.quantize import quantize_static_qdq

logger = logging.getLogger(__name__)

NO_FINDING_INDEX = LABELS.index(NO_FINDING)


@dataclass(frozen=True)
class SpeedPair:
    batch: int
    rounds: int
    fp32_images_per_s: float  # median
    int8_images_per_s: float
    speedup: float  # median of per-round fp32_time / int8_time
    best_speedup: float  # fastest fp32 run / fastest int8 run
    no_rewrite_images_per_s: float | None = None  # INT8 with the BatchNorms left in float (ablation)
    no_rewrite_speedup: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Int8Result:
    weights: str
    calibration_images: int
    evaluation_images: int
    labelled: int
    positives: int
    quantize_seconds: float
    batchnorms_rewritten: int
    speed: list[SpeedPair]
    max_abs_diff: float
    mean_abs_diff: float
    auroc_fp32: float
    auroc_int8: float
    auroc_diff: float
    profile_fp32: list[OpTime] = field(default_factory=list)
    profile_int8: list[OpTime] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["speed"] = [pair.as_dict() for pair in self.speed]
        data["profile_fp32"] = [op.as_dict() for op in self.profile_fp32]
        data["profile_int8"] = [op.as_dict() for op in self.profile_int8]
        return data


def split(images: Sequence[LabelledImage], calibration: int) -> tuple[list[Path], list[LabelledImage]]:
    """(calibration paths, evaluation images): the first ``calibration`` images, and the rest."""
    if len(images) <= calibration:
        raise ValueError(f"need more than {calibration} images to calibrate and evaluate, got {len(images)}")
    return [image.path for image in images[:calibration]], list(images[calibration:])


def predict(model_path: Path, tensors: np.ndarray, *, threads: int, batch: int = 8) -> np.ndarray:
    session = make_session(model_path, threads=threads)
    rows = [
        session.run([OUTPUT_NAME], {INPUT_NAME: tensors[start : start + batch]})[0]
        for start in range(0, len(tensors), batch)
    ]
    return np.concatenate(rows, axis=0)


def abnormal_auroc(probabilities: np.ndarray, labels: Sequence[int | None]) -> float:
    """AUROC of ``1 - p(No Finding)`` for abnormal (1) against normal (0); unlabelled rows left out."""
    keep = [index for index, label in enumerate(labels) if label is not None]
    scores = (1.0 - probabilities[keep, NO_FINDING_INDEX]).tolist()
    return auroc(scores, [int(labels[index] or 0) for index in keep])


def speed_pairs(
    fp32_path: Path,
    int8_path: Path,
    tensors: np.ndarray,
    *,
    threads: int,
    batches: Sequence[int],
    rounds: int,
    max_seconds: float,
    no_rewrite_path: Path | None = None,
) -> list[SpeedPair]:
    sessions = {
        "fp32": make_session(fp32_path, threads=threads),
        "int8": make_session(int8_path, threads=threads),
    }
    if no_rewrite_path is not None:
        sessions["no_rewrite"] = make_session(no_rewrite_path, threads=threads)
    pairs = []
    for batch in batches:
        runs = interleaved_runs(sessions, batch_of(tensors, batch), rounds=rounds, max_seconds=max_seconds)
        fp32, int8, plain = runs["fp32"], runs["int8"], runs.get("no_rewrite")
        pairs.append(
            SpeedPair(
                batch=batch,
                rounds=len(fp32),
                fp32_images_per_s=round(batch / statistics.median(fp32), 1),
                int8_images_per_s=round(batch / statistics.median(int8), 1),
                speedup=round(statistics.median(f / i for f, i in zip(fp32, int8, strict=True)), 2),
                best_speedup=round(min(fp32) / min(int8), 2),
                no_rewrite_images_per_s=round(batch / statistics.median(plain), 1) if plain else None,
                no_rewrite_speedup=round(
                    statistics.median(f / p for f, p in zip(fp32, plain, strict=True)), 2
                )
                if plain
                else None,
            )
        )
    return pairs


def compare(
    fp32_path: Path,
    int8_path: Path,
    images: Sequence[LabelledImage],
    *,
    input_size: int,
    threads: int,
    calibration: int = 64,
    batches: Sequence[int] = (1, 8),
    rounds: int = 12,
    max_seconds: float = 30.0,
    eval_limit: int | None = None,
    profile: bool = True,
    ablation: bool = True,
) -> Int8Result:
    """Quantise ``fp32_path`` into ``int8_path`` (calibrated on real images) and compare the two."""
    calibration_paths, evaluation = split(images, calibration)
    if eval_limit is not None:
        evaluation = evaluation[:eval_limit]
    quantized = quantize_static_qdq(fp32_path, int8_path, calibration_paths, input_size)
    no_rewrite_path = int8_path.with_name(f"{int8_path.stem}-bn-float.onnx") if ablation else None
    if no_rewrite_path is not None:
        quantize_static_qdq(
            fp32_path, no_rewrite_path, calibration_paths, input_size, rewrite_batchnorm=False
        )
    tensors = load_tensors([image.path for image in evaluation], input_size)
    fp32 = predict(fp32_path, tensors, threads=threads)
    int8 = predict(int8_path, tensors, threads=threads)
    labels = [image.abnormal for image in evaluation]
    labelled = [label for label in labels if label is not None]
    difference = np.abs(fp32 - int8)
    auroc_fp32, auroc_int8 = abnormal_auroc(fp32, labels), abnormal_auroc(int8, labels)
    speed = speed_pairs(
        fp32_path,
        int8_path,
        tensors,
        threads=threads,
        batches=batches,
        rounds=rounds,
        max_seconds=max_seconds,
        no_rewrite_path=no_rewrite_path,
    )
    profile_batch = batch_of(tensors, max(batches))
    result = Int8Result(
        weights=read_metadata(fp32_path).get("cxr.weights", "unknown"),
        calibration_images=len(calibration_paths),
        evaluation_images=len(evaluation),
        labelled=len(labelled),
        positives=sum(labelled),
        quantize_seconds=round(quantized.seconds, 1),
        batchnorms_rewritten=quantized.batchnorms_rewritten,
        speed=speed,
        max_abs_diff=round(float(difference.max()), 5),
        mean_abs_diff=round(float(difference.mean()), 6),
        auroc_fp32=round(auroc_fp32, 4),
        auroc_int8=round(auroc_int8, 4),
        auroc_diff=round(abs(auroc_fp32 - auroc_int8), 4),
        profile_fp32=profile_ops(fp32_path, profile_batch, threads=threads)[:8] if profile else [],
        profile_int8=profile_ops(int8_path, profile_batch, threads=threads)[:8] if profile else [],
    )
    logger.info(
        "fp32 vs int8",
        extra={
            "speedup": [pair.speedup for pair in speed],
            "max_abs_diff": result.max_abs_diff,
            "auroc_diff": result.auroc_diff,
        },
    )
    return result
