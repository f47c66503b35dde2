"""Metrics on the validation split or any labelled folder: AUROCs and the high-sensitivity operating point.

The abnormal-vs-normal score is the worklist priority (``cxr_triage.priority``), so the threshold chosen
here is a threshold on exactly what orders the radiologists' worklist.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import roc_auc_score

from cxr_triage.labels import LABELS
from cxr_triage.priority import priorities

# CheXpert's competition findings (Irvin et al., 2019): the mean AUROC over these is the figure the
# literature quotes (DenseNet121 on CheXpert's validation set: about 0.90).
COMPETITION: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    sensitivity: float
    specificity: float
    precision: float
    f1: float


@dataclass(frozen=True)
class Report:
    n: int
    auroc_per_label: dict[str, float]
    auroc_macro: float
    auroc_abnormal: float
    operating: OperatingPoint
    n_abnormal: int = 0
    n_normal: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def auroc_competition(self) -> float:
        """Mean AUROC over the competition findings, when all five have both classes; else NaN."""
        values = [self.auroc_per_label.get(label, math.nan) for label in COMPETITION]
        return math.nan if any(math.isnan(v) for v in values) else float(np.mean(values))

    def flat(self, prefix: str = "") -> dict[str, float]:
        """Metric name -> value for MLflow (label names made key-safe; NaN left out)."""
        values = {
            "auroc_macro": self.auroc_macro,
            "auroc_abnormal": self.auroc_abnormal,
            "auroc_competition": self.auroc_competition,
            "threshold": self.operating.threshold,
            "sensitivity": self.operating.sensitivity,
            "specificity": self.operating.specificity,
            "precision": self.operating.precision,
            "f1": self.operating.f1,
            **{f"auroc_{label.lower().replace(' ', '_')}": v for label, v in self.auroc_per_label.items()},
            **self.extra,
        }
        return {f"{prefix}{k}": float(v) for k, v in values.items() if not math.isnan(v)}


def json_number(value: float, digits: int = 6) -> float | None:
    """A metric for JSON output: rounded, and None where undefined (NaN)."""
    return None if math.isnan(value) else round(float(value), digits)


def _auroc(truth: np.ndarray, score: np.ndarray) -> float:
    known = ~np.isnan(truth)
    y = truth[known]
    if y.size == 0 or y.min() == y.max():
        return math.nan  # undefined without both classes
    return float(roc_auc_score(y, score[known]))


def per_label_auroc(probabilities: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """AUROC of each label that has both classes among its known (non-NaN) entries."""
    result = {}
    for index, label in enumerate(LABELS):
        value = _auroc(truth[:, index], probabilities[:, index])
        if not math.isnan(value):
            result[label] = value
    return result


def threshold_for_sensitivity(truth: np.ndarray, score: np.ndarray, target: float) -> float:
    """A threshold whose sensitivity (score >= threshold) reaches ``target``, as high as possible.

    It lies halfway between the k-th highest positive score (k = the fewest positives that reach the target)
    and the next lower score of any study, not on the positive's score itself: there, a difference of 1e-7
    between PyTorch and ONNX Runtime would drop that study below the threshold.
    """
    known = ~np.isnan(truth)
    positives = np.sort(score[known & (truth == 1)])[::-1]
    if positives.size == 0:
        return math.nan
    needed = max(1, math.ceil(target * positives.size - 1e-9))
    kth = float(positives[needed - 1])
    below = score[known & (score < kth)]
    return (kth + float(below.max())) / 2 if below.size else kth / 2


def operating_point(truth: np.ndarray, score: np.ndarray, threshold: float) -> OperatingPoint:
    known = ~np.isnan(truth)
    y, s = truth[known], score[known]
    flagged = s >= threshold
    tp = float(np.sum(flagged & (y == 1)))
    fp = float(np.sum(flagged & (y == 0)))
    fn = float(np.sum(~flagged & (y == 1)))
    tn = float(np.sum(~flagged & (y == 0)))
    sensitivity = tp / (tp + fn) if tp + fn else math.nan
    specificity = tn / (tn + fp) if tn + fp else math.nan
    precision = tp / (tp + fp) if tp + fp else math.nan
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return OperatingPoint(threshold, sensitivity, specificity, precision, f1)


def abnormal_score(probabilities: np.ndarray) -> np.ndarray:
    return priorities(probabilities)


def report(
    probabilities: np.ndarray,
    truth: np.ndarray,
    abnormal: np.ndarray,
    *,
    threshold: float | None = None,
    target_sensitivity: float = 0.95,
) -> Report:
    """All metrics; the threshold is chosen here for ``target_sensitivity`` unless one is given."""
    score = abnormal_score(probabilities)
    per_label = per_label_auroc(probabilities, truth)
    if threshold is None:
        threshold = threshold_for_sensitivity(abnormal, score, target_sensitivity)
    known = ~np.isnan(abnormal)
    return Report(
        n=int(probabilities.shape[0]),
        auroc_per_label=per_label,
        auroc_macro=float(np.mean(list(per_label.values()))) if per_label else math.nan,
        auroc_abnormal=_auroc(abnormal, score),
        operating=operating_point(abnormal, score, threshold),
        n_abnormal=int(np.sum(abnormal[known] == 1)),
        n_normal=int(np.sum(abnormal[known] == 0)),
    )
