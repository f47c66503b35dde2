"""Input and prediction drift: is what the model sees now still what it saw when it was made champion?

Each scored image is summarised once (``input_sample``: a few numbers, no pixels, so the summaries can sit
in a Faust table and be replayed); a window of summaries is compared with the champion's reference window
(``drift_report``) feature by feature, with the Population Stability Index (PSI) and, for continuous
statistics, the two-sample Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``). Thresholds and the measured
values on the public sample set are in docs/drift.md.

Features (``cxr_triage.events.DriftFeature``):

* ``intensity``: PSI on the pooled 16-bin grey-level histogram (the mean of the images' normalised
  histograms, so each image weighs the same whatever its size); KS on the per-image mean intensity and dark
  fraction, reporting the stronger. The histogram is what catches an inverted image: its mean barely moves
  (a chest film is about mid-grey on average), its histogram's shape does.
* ``size``: PSI on reference-quantile bins and KS, each on width and height, reporting the stronger.
* ``view``, ``source``: PSI on category frequencies (no KS: no order).
* ``prediction``: the priorities' PSI on reference-quantile bins and KS.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Final

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.stats import ks_2samp

from cxr_triage.events import DriftFeature, DriftReportV1, DriftScore

HIST_BINS: Final[int] = 16
# A pixel darker than this is "dark": 1/8 of the range, below the soft tissue of a normally exposed film.
DARK_LEVEL: Final[int] = 32


class InputSample(BaseModel):
    """What drift needs to know about one input image: no pixels, no identifier."""

    model_config = ConfigDict(frozen=True)

    histogram: tuple[float, ...] = Field(min_length=HIST_BINS, max_length=HIST_BINS)
    mean_intensity: float = Field(ge=0.0, le=255.0)
    dark_fraction: float = Field(ge=0.0, le=1.0)
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    view: str = "UNKNOWN"
    source: str = "unknown"


def input_sample(pixels: np.ndarray, *, view: str = "UNKNOWN", source: str = "unknown") -> InputSample:
    """Summarise a 2-D uint8 greyscale image (as ``cxr_triage.imaging.decode_grayscale`` returns it)."""
    if pixels.ndim != 2 or pixels.size == 0:
        raise ValueError(f"expected a non-empty 2-D greyscale image, got shape {pixels.shape}")
    gray = np.asarray(pixels, dtype=np.uint8)
    counts = np.bincount(gray.ravel() // (256 // HIST_BINS), minlength=HIST_BINS)
    height, width = gray.shape
    return InputSample(
        histogram=tuple(float(c) for c in counts / gray.size),
        mean_intensity=float(gray.mean()),
        dark_fraction=float(np.count_nonzero(gray < DARK_LEVEL) / gray.size),
        width=int(width),
        height=int(height),
        view=view,
        source=source,
    )


class DriftThresholds(BaseModel):
    """When a feature counts as drifted. The defaults are argued, and measured against, in docs/drift.md."""

    model_config = ConfigDict(frozen=True)

    # The industry rule of thumb: PSI < 0.1 stable, 0.1-0.25 moderate, >= 0.25 significant shift.
    psi: float = Field(default=0.25, gt=0.0)
    # KS must be both significant and large: at thousands of samples a trivial shift is "significant", and
    # at 1e-3 a feature evaluated at every window still fires on chance only about once per 1000 looks.
    ks_pvalue: float = Field(default=1e-3, gt=0.0, lt=1.0)
    ks_statistic: float = Field(default=0.2, gt=0.0, le=1.0)
    # Fewer samples on either side than this: scores are reported, nothing is flagged. Sampling noise alone
    # gives a PSI of about (bins - 1) * (1/n_ref + 1/n_win), with a long tail: small windows must not vote.
    min_window: int = Field(default=100, ge=1)
    # Reference-quantile bins for continuous PSI. Quintiles, not the customary deciles: with deciles a
    # 100-sample window against 267 alarmed on chance in 27 of 500 random splits of the public set, with
    # quintiles in 1 (docs/drift.md); KS covers the finer shape a coarser binning misses.
    quantile_bins: int = Field(default=5, ge=2)
    # Stands in for an empty bin's share so that PSI stays finite; a category seen on one side only then
    # contributes about share * ln(share / 1e-4), i.e. it is flagged once it holds a few percent.
    psi_epsilon: float = Field(default=1e-4, gt=0.0, lt=0.01)


def psi(expected: np.ndarray, actual: np.ndarray, epsilon: float) -> float:
    """PSI = sum((a - e) * ln(a / e)) over shared bins, each side's shares with empty bins set to epsilon."""
    e = np.clip(np.asarray(expected, dtype=np.float64), epsilon, None)
    a = np.clip(np.asarray(actual, dtype=np.float64), epsilon, None)
    return float(np.sum((a - e) * np.log(a / e)))


def _shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else counts.astype(np.float64)


def quantile_psi(reference: np.ndarray, window: np.ndarray, bins: int, epsilon: float) -> float:
    """PSI of a continuous statistic on bins cut at the reference's quantiles (right-closed, open ends).

    Right-closed bins keep a constant reference (every image 320 px wide) in one bin and send any other
    value to another, so a change of a constant is measured rather than binned away.
    """
    edges = np.unique(np.quantile(reference, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    ref_counts = np.bincount(np.searchsorted(edges, reference, side="left"), minlength=edges.size + 1)
    win_counts = np.bincount(np.searchsorted(edges, window, side="left"), minlength=edges.size + 1)
    return psi(_shares(ref_counts), _shares(win_counts), epsilon)


def categorical_psi(reference: Sequence[str], window: Sequence[str], epsilon: float) -> float:
    categories = sorted(set(reference) | set(window))
    ref, win = Counter(reference), Counter(window)
    ref_counts = np.array([ref[c] for c in categories], dtype=np.float64)
    win_counts = np.array([win[c] for c in categories], dtype=np.float64)
    return psi(_shares(ref_counts), _shares(win_counts), epsilon)


def _strongest_ks(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """(statistic, p-value) of the pair whose KS statistic is largest."""
    results = [ks_2samp(ref, win) for ref, win in pairs]
    best = max(results, key=lambda r: float(r.statistic))
    return float(best.statistic), float(best.pvalue)


def _flagged(score: DriftScore, limits: DriftThresholds) -> bool:
    by_psi = score.psi is not None and score.psi >= limits.psi
    by_ks = (
        score.ks_statistic is not None
        and score.ks_pvalue is not None
        and score.ks_pvalue < limits.ks_pvalue
        and score.ks_statistic >= limits.ks_statistic
    )
    return by_psi or by_ks


def _column(samples: Sequence[InputSample], read: Callable[[InputSample], float]) -> np.ndarray:
    return np.array([read(s) for s in samples], dtype=np.float64)


def _scores(
    reference: Sequence[InputSample],
    window: Sequence[InputSample],
    ref_priorities: np.ndarray,
    win_priorities: np.ndarray,
    limits: DriftThresholds,
) -> list[DriftScore]:
    eps, bins = limits.psi_epsilon, limits.quantile_bins
    scores: list[DriftScore] = []
    if reference and window:
        ref_hist = np.mean([s.histogram for s in reference], axis=0)
        win_hist = np.mean([s.histogram for s in window], axis=0)
        stat, p = _strongest_ks(
            [
                (_column(reference, lambda s: s.mean_intensity), _column(window, lambda s: s.mean_intensity)),
                (_column(reference, lambda s: s.dark_fraction), _column(window, lambda s: s.dark_fraction)),
            ]
        )
        scores.append(
            DriftScore(feature="intensity", psi=psi(ref_hist, win_hist, eps), ks_statistic=stat, ks_pvalue=p)
        )
        sides = [
            (_column(reference, lambda s: s.width), _column(window, lambda s: s.width)),
            (_column(reference, lambda s: s.height), _column(window, lambda s: s.height)),
        ]
        stat, p = _strongest_ks(sides)
        size_psi = max(quantile_psi(ref, win, bins, eps) for ref, win in sides)
        scores.append(DriftScore(feature="size", psi=size_psi, ks_statistic=stat, ks_pvalue=p))
        categorical: tuple[DriftFeature, ...] = ("view", "source")
        for feature in categorical:
            ref_cats = [str(getattr(s, feature)) for s in reference]
            win_cats = [str(getattr(s, feature)) for s in window]
            scores.append(DriftScore(feature=feature, psi=categorical_psi(ref_cats, win_cats, eps)))
    if ref_priorities.size and win_priorities.size:
        stat, p = _strongest_ks([(ref_priorities, win_priorities)])
        scores.append(
            DriftScore(
                feature="prediction",
                psi=quantile_psi(ref_priorities, win_priorities, bins, eps),
                ks_statistic=stat,
                ks_pvalue=p,
            )
        )
    return scores


def _priorities(values: Sequence[float], side: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.size and not np.all(np.isfinite(array)):
        raise ValueError(f"{side} priorities must be finite")
    return array


def drift_report(
    reference: Sequence[InputSample],
    window: Sequence[InputSample],
    *,
    reference_priorities: Sequence[float],
    window_priorities: Sequence[float],
    model_version: str,
    thresholds: DriftThresholds | None = None,
) -> DriftReportV1:
    """Compare the current window with the champion's reference window; ``alert`` if any feature drifted.

    The input features need samples on both sides, the prediction feature priorities on both sides; a
    feature that cannot be computed is left out of ``scores``. Below ``min_window`` on either side the
    scores are still reported (a dashboard can watch them settle) but none is flagged: a PSI on a handful
    of images is mostly noise.
    """
    limits = thresholds or DriftThresholds()
    ref_p = _priorities(reference_priorities, "reference")
    win_p = _priorities(window_priorities, "window")
    raw = _scores(reference, window, ref_p, win_p, limits)
    inputs_enough = min(len(reference), len(window)) >= limits.min_window
    preds_enough = min(ref_p.size, win_p.size) >= limits.min_window
    scores = tuple(
        score.model_copy(
            update={
                "flagged": (preds_enough if score.feature == "prediction" else inputs_enough)
                and _flagged(score, limits)
            }
        )
        for score in raw
    )
    return DriftReportV1(
        model_version=model_version,
        reference_size=len(reference),
        window_size=len(window),
        scores=scores,
        alert=any(s.flagged for s in scores),
    )
