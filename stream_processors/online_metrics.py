"""How the served model does on radiologists' reads: the numbers behind ``cxr.metrics.v1`` and the gauges.

Pure functions over feedback examples (verdicts joined with the predictions they judged); the Faust
processors decide which examples form a window and publish what comes out.

Definitions (the ones the dashboards and the retrain trigger rely on):

* truth is the verdict's abnormal-vs-normal call (``FeedbackEventV1.abnormal``: normal only when the
  radiologist ticked No Finding); the score is the model's ``priority``, its abnormal score, which is what
  orders the worklist, so AUROC here measures the ordering radiologists actually see.
* the model's call on an example is ``priority >= threshold`` with the threshold that example carries (the
  served model's operating point at scoring time), the convention the trainer chose the threshold with.
* agreement rate is the share of examples where that call equals the radiologist's abnormal/normal verdict:
  the model's accuracy at its operating point. The verdict's ``agreed_with_model`` flag is not used: it is a
  click the UI does not require, so its absence would read as disagreement.
* per-finding AUROC leaves out, for each finding, the examples whose radiologist marked that finding
  uncertain: a guess must not count as truth in the score the trainer's gate is compared with.
* a metric that the window cannot define (no examples, one class only, no threshold) is ``None``, never 0.5
  or 0: a dashboard must show "no data", not a number that looks measured.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, roc_auc_score

from cxr_triage.events import FeedbackEventV1, MetricsEventV1, MetricsWindow
from cxr_triage.labels import LABELS

UNKNOWN_TIER = "unknown"


def latest_per_reader(examples: Sequence[FeedbackEventV1]) -> list[FeedbackEventV1]:
    """One example per (study, radiologist): the latest decision, so an amendment replaces what it amends.

    A replayed or amended stream may hand the same reader's study over more than once; counting each would
    weigh that study twice. Ties on ``decided_at`` keep the later one in input order (stream order).
    """
    latest: dict[str, FeedbackEventV1] = {}
    for example in examples:
        kept = latest.get(example.key)
        if kept is None or example.decided_at >= kept.decided_at:
            latest[example.key] = example
    return list(latest.values())


def _auroc(truth: np.ndarray, score: np.ndarray) -> float | None:
    if truth.size == 0 or np.unique(truth).size < 2:
        return None
    return float(roc_auc_score(truth, score))


def _per_finding_auroc(examples: Sequence[FeedbackEventV1]) -> dict[str, float]:
    result: dict[str, float] = {}
    for finding in LABELS:
        certain = [e for e in examples if finding not in e.uncertain]
        truth = np.array([e.labels[finding] for e in certain], dtype=np.int64)
        score = np.array([e.probabilities[finding] for e in certain], dtype=np.float64)
        auroc = _auroc(truth, score)
        if auroc is not None:
            result[finding] = auroc
    return result


def _served_threshold(examples: Sequence[FeedbackEventV1]) -> float | None:
    """The threshold to report: the latest decided example's (one model version has one operating point)."""
    carrying = [e for e in examples if e.threshold is not None]
    if not carrying:
        return None
    return max(carrying, key=lambda e: e.decided_at).threshold


def _operating_point(
    examples: Sequence[FeedbackEventV1],
) -> tuple[float | None, float | None, float | None]:
    """Sensitivity, specificity and agreement of the model's calls, over examples that carry a threshold."""
    carrying = [e for e in examples if e.threshold is not None]
    if not carrying:
        return None, None, None
    truth = np.array([e.abnormal for e in carrying], dtype=np.int64)
    called = np.array([e.priority >= (e.threshold or 0.0) for e in carrying], dtype=np.int64)
    agreement = float(accuracy_score(truth, called))
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(truth, called, labels=[0, 1]).ravel())
    sensitivity = tp / (tp + fn) if tp + fn else None
    specificity = tn / (tn + fp) if tn + fp else None
    if sensitivity is None or specificity is None:
        # One class only: the other rate is measured on the same few reads and would mislead on its own.
        return None, None, agreement
    return sensitivity, specificity, agreement


def _time_to_read(examples: Sequence[FeedbackEventV1]) -> dict[str, float]:
    """Median seconds from arrival to decision per tier: the SLA's promise is per tier."""
    by_tier: dict[str, list[float]] = {}
    for e in examples:
        tier = e.tier.value if e.tier is not None else UNKNOWN_TIER
        by_tier.setdefault(tier, []).append((e.decided_at - e.received_at).total_seconds())
    return {tier: float(np.median(seconds)) for tier, seconds in sorted(by_tier.items())}


def compute_metrics(
    examples: Sequence[FeedbackEventV1],
    *,
    model_name: str,
    model_version: str,
    window: MetricsWindow,
) -> MetricsEventV1:
    """The online metrics of one served model version over the examples of one window.

    Examples of another model (name or version) are left out rather than trusted to the caller: mixing two
    versions' scores in one AUROC would blame or credit the wrong model.
    """
    mine = latest_per_reader(
        [e for e in examples if e.model_name == model_name and e.model_version == model_version]
    )
    truth = np.array([e.abnormal for e in mine], dtype=np.int64)
    score = np.array([e.priority for e in mine], dtype=np.float64)
    sensitivity, specificity, agreement = _operating_point(mine)
    return MetricsEventV1(
        model_name=model_name,
        model_version=model_version,
        window=window,
        examples=len(mine),
        abnormal=int(truth.sum()),
        auroc_abnormal=_auroc(truth, score),
        auroc_per_finding=_per_finding_auroc(mine),
        threshold=_served_threshold(mine),
        sensitivity=sensitivity,
        specificity=specificity,
        agreement_rate=agreement,
        time_to_read_s=_time_to_read(mine),
    )
