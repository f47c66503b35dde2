"""SLA tier thresholds of a trained model, chosen on validation data and stored in its metadata.

Both are thresholds on the worklist priority (``cxr_triage.priority``):

- urgent: the high-sensitivity operating threshold (sensitivity for "abnormal" >= the target, 0.95 by
  default); below it a study is the model's "normal" and is read in the routine tier;
- critical: the lowest priority above which the model's positive predictive value for an *urgent* finding
  (one whose priority weight is 1.0: pneumothorax, edema, consolidation, ...) reaches a target (0.8 by
  default), so the critical tier holds studies that mostly do need reading first. Where no cut reaches the
  target, nothing is critical by the model's say (the threshold is 1.0): the aging still lifts old studies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cxr_triage.labels import LABELS
from cxr_triage.model.contract import CRITICAL_KEY, URGENT_KEY
from cxr_triage.priority import DEFAULT_WEIGHTS

URGENT_FINDINGS = tuple(label for label, weight in DEFAULT_WEIGHTS.items() if weight >= 1.0)
MIN_CRITICAL_STUDIES = 5  # a PPV over fewer flagged studies is noise


@dataclass(frozen=True)
class Tiers:
    urgent: float
    critical: float
    critical_ppv: float  # PPV for an urgent finding at the critical threshold on the data it was chosen on

    def metadata(self) -> dict[str, str]:
        return {URGENT_KEY: repr(self.urgent), CRITICAL_KEY: repr(self.critical)}


def urgent_truth(truth: np.ndarray) -> np.ndarray:
    """1 where any urgent finding is positive, else 0 (an uncertain label counts as not shown)."""
    columns = [LABELS.index(label) for label in URGENT_FINDINGS]
    return (np.nan_to_num(truth[:, columns], nan=0.0) == 1).any(axis=1).astype(np.float64)


def critical_threshold(urgent: np.ndarray, score: np.ndarray, *, target_ppv: float, floor: float) -> float:
    """Lowest cut (>= ``floor``) whose top studies have PPV >= ``target_ppv``; 1.0 when none has."""
    order = np.argsort(-score, kind="stable")
    ranked, hits = score[order], np.cumsum(urgent[order])
    best = math.nan
    for k in range(MIN_CRITICAL_STUDIES, len(ranked) + 1):
        if ranked[k - 1] < floor:
            break
        if k < len(ranked) and ranked[k] == ranked[k - 1]:
            continue  # a cut must fall between two different scores
        if hits[k - 1] / k >= target_ppv:
            # Halfway to the next lower score, so a 1e-7 difference between runtimes moves no study.
            below = float(ranked[k]) if k < len(ranked) else 0.0
            best = (float(ranked[k - 1]) + max(below, floor)) / 2
    return 1.0 if math.isnan(best) else max(best, floor)


def choose_tiers(
    score: np.ndarray, truth: np.ndarray, *, operating_threshold: float, target_ppv: float
) -> Tiers:
    """Tier thresholds for validation priorities ``score`` [N] and labels ``truth`` [N, 14]."""
    urgent = urgent_truth(truth)
    floor = float(np.clip(operating_threshold, 0.0, 1.0)) if math.isfinite(operating_threshold) else 0.5
    critical = critical_threshold(urgent, score, target_ppv=target_ppv, floor=floor)
    flagged = score >= critical
    ppv = float(urgent[flagged].mean()) if flagged.any() else math.nan
    return Tiers(urgent=floor, critical=critical, critical_ppv=ppv)
