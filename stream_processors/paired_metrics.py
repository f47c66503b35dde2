"""Champion against challenger on the same verdicted studies (paired), and each canary arm on its own.

Pure functions over feedback examples; ``rollout_policy`` turns what comes out into a decision.

* A model's reading of an example is its serving prediction when it served the study, else its shadow
  prediction (``FeedbackEventV1.shadow``). Paired examples are those both models read; truth is the verdict's
  abnormal call and the score the model's ``priority``, as in ``online_metrics``.
* The AUROC difference (challenger - champion) gets a paired bootstrap percentile CI from
  ``scipy.stats.bootstrap(paired=True)``: each resample draws the same studies for both models, so what the
  two share (easy and hard studies) cancels out. Chosen over DeLong because no kept library here implements
  DeLong (scikit-learn and scipy do not; statsmodels is not a dependency) and the bootstrap needs no variance
  formula of our own. The resampling is seeded, so the same examples always give the same interval (and
  the same decision). A resample holding one class only has no AUROC: it is NaN, and so then is the interval
  (no decision rests on it); the policy asks for enough studies of each class that this does not happen.
* Sensitivity and specificity are each model's at its own served threshold (the one its prediction carries).
* Scoring latency is ``scored_at - received_at`` of each model's predictions (median and p95); for a canary,
  time-to-read (arrival to decision, median) per arm: the studies each model ordered.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy.stats import DegenerateDataWarning, bootstrap, rankdata
from sklearn.metrics import confusion_matrix, roc_auc_score

from cxr_triage.events import FeedbackEventV1, PredictionEventV1, RolloutArm


@dataclass(frozen=True)
class Reading:
    truth: int
    priority: float
    threshold: float | None
    latency_s: float


def reading_of(example: FeedbackEventV1, version: str) -> Reading | None:
    """``version``'s reading of the example's study: served, or in shadow; None if it did not read it."""
    if example.model_version == version:
        priority, threshold = example.priority, example.threshold
        latency = (example.scored_at - example.received_at).total_seconds()
    else:
        shadow: PredictionEventV1 | None = example.shadow.get(version)
        if shadow is None:
            return None
        priority, threshold = shadow.priority, shadow.threshold
        latency = (shadow.scored_at - shadow.received_at).total_seconds()
    return Reading(truth=example.abnormal, priority=priority, threshold=threshold, latency_s=latency)


def rank_auroc(truth: np.ndarray, score: np.ndarray) -> np.ndarray:
    """AUROC along the last axis (Mann-Whitney U over ranks, ties averaged); NaN where one class is absent."""
    ranks = rankdata(score, axis=-1)
    positives = truth.sum(axis=-1)
    negatives = truth.shape[-1] - positives
    u = (ranks * truth).sum(axis=-1) - positives * (positives + 1) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = u / (positives * negatives)
    return np.where((positives > 0) & (negatives > 0), auc, np.nan)


def _auroc(truth: np.ndarray, score: np.ndarray) -> float | None:
    if truth.size == 0 or np.unique(truth).size < 2:
        return None
    return float(roc_auc_score(truth, score))


def operating_point(readings: Sequence[Reading]) -> tuple[float | None, float | None]:
    """Sensitivity and specificity at each reading's own threshold (readings without one left out)."""
    carrying = [r for r in readings if r.threshold is not None]
    if not carrying:
        return None, None
    truth = np.array([r.truth for r in carrying], dtype=np.int64)
    called = np.array([r.priority >= (r.threshold or 0.0) for r in carrying], dtype=np.int64)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(truth, called, labels=[0, 1]).ravel())
    return (tp / (tp + fn) if tp + fn else None), (tn / (tn + fp) if tn + fp else None)


def _quantile(values: Sequence[float], q: float) -> float | None:
    return float(np.quantile(np.asarray(values, dtype=np.float64), q)) if values else None


class PairedMetrics(BaseModel):
    """Both models on the same examples; a value is None when the examples cannot define it."""

    model_config = ConfigDict(frozen=True)

    champion_version: str
    challenger_version: str
    paired: int
    abnormal: int
    auroc_champion: float | None = None
    auroc_challenger: float | None = None
    auroc_difference: float | None = None
    difference_ci_low: float | None = None
    difference_ci_high: float | None = None
    confidence: float
    sensitivity_champion: float | None = None
    specificity_champion: float | None = None
    sensitivity_challenger: float | None = None
    specificity_challenger: float | None = None
    latency_p50_champion_s: float | None = None
    latency_p95_champion_s: float | None = None
    latency_p50_challenger_s: float | None = None
    latency_p95_challenger_s: float | None = None

    @property
    def normal(self) -> int:
        return self.paired - self.abnormal

    def as_metrics(self) -> dict[str, float | None]:
        """The numbers by name, as ``ModelDecisionEventV1.metrics`` carries them."""
        return {
            name: float(value) if value is not None else None
            for name, value in self.model_dump(exclude={"champion_version", "challenger_version"}).items()
        }


def paired_metrics(
    examples: Sequence[FeedbackEventV1],
    *,
    champion: str,
    challenger: str,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> PairedMetrics:
    pairs = [
        (a, b)
        for a, b in ((reading_of(e, champion), reading_of(e, challenger)) for e in examples)
        if a is not None and b is not None
    ]
    champ = [a for a, _ in pairs]
    chall = [b for _, b in pairs]
    truth = np.array([a.truth for a in champ], dtype=np.int64)
    score_a = np.array([a.priority for a in champ], dtype=np.float64)
    score_b = np.array([b.priority for b in chall], dtype=np.float64)
    auroc_a, auroc_b = _auroc(truth, score_a), _auroc(truth, score_b)
    low = high = difference = None
    if auroc_a is not None and auroc_b is not None:
        difference = auroc_b - auroc_a

        def statistic(t: np.ndarray, a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
            return rank_auroc(t, b) - rank_auroc(t, a)

        with warnings.catch_warnings():
            # NaN resamples (one class drawn) make the interval NaN: reported as None below, not logged.
            warnings.simplefilter("ignore", DegenerateDataWarning)
            result = bootstrap(
                (truth, score_a, score_b),
                statistic,
                paired=True,
                vectorized=True,
                n_resamples=n_resamples,
                batch=500,
                confidence_level=confidence,
                method="percentile",
                rng=np.random.default_rng(seed),
            )
        ci_low, ci_high = float(result.confidence_interval.low), float(result.confidence_interval.high)
        low = None if np.isnan(ci_low) else ci_low
        high = None if np.isnan(ci_high) else ci_high
    sens_a, spec_a = operating_point(champ)
    sens_b, spec_b = operating_point(chall)
    return PairedMetrics(
        champion_version=champion,
        challenger_version=challenger,
        paired=len(pairs),
        abnormal=int(truth.sum()),
        auroc_champion=auroc_a,
        auroc_challenger=auroc_b,
        auroc_difference=difference,
        difference_ci_low=low,
        difference_ci_high=high,
        confidence=confidence,
        sensitivity_champion=sens_a,
        specificity_champion=spec_a,
        sensitivity_challenger=sens_b,
        specificity_challenger=spec_b,
        latency_p50_champion_s=_quantile([a.latency_s for a in champ], 0.5),
        latency_p95_champion_s=_quantile([a.latency_s for a in champ], 0.95),
        latency_p50_challenger_s=_quantile([b.latency_s for b in chall], 0.5),
        latency_p95_challenger_s=_quantile([b.latency_s for b in chall], 0.95),
    )


class ArmMetrics(BaseModel):
    """One arm of a canary: the studies one model ordered, judged by their verdicts."""

    model_config = ConfigDict(frozen=True)

    model_version: str
    arm: RolloutArm
    examples: int
    abnormal: int
    auroc: float | None = None
    sensitivity: float | None = None
    specificity: float | None = None
    time_to_read_p50_s: float | None = None
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None


def arm_metrics(examples: Sequence[FeedbackEventV1], *, model_version: str, arm: RolloutArm) -> ArmMetrics:
    """Metrics of the examples ``model_version`` served on ``arm`` (others are left out)."""
    mine = [e for e in examples if e.model_version == model_version and e.arm == arm]
    readings = [r for r in (reading_of(e, model_version) for e in mine) if r is not None]
    truth = np.array([r.truth for r in readings], dtype=np.int64)
    sensitivity, specificity = operating_point(readings)
    return ArmMetrics(
        model_version=model_version,
        arm=arm,
        examples=len(mine),
        abnormal=int(truth.sum()),
        auroc=_auroc(truth, np.array([r.priority for r in readings], dtype=np.float64)),
        sensitivity=sensitivity,
        specificity=specificity,
        time_to_read_p50_s=_quantile([(e.decided_at - e.received_at).total_seconds() for e in mine], 0.5),
        latency_p50_s=_quantile([r.latency_s for r in readings], 0.5),
        latency_p95_s=_quantile([r.latency_s for r in readings], 0.95),
    )
