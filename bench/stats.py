"""Small, dependency-light statistics for the benchmarks: percentiles, summaries, ratios, AUROC."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be within [0, 100], got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class LatencySummary:
    """Latencies in milliseconds."""

    n: int
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarise_ms(seconds: Sequence[float]) -> LatencySummary:
    """Summary of durations given in seconds, reported in milliseconds (rounded to 0.1 ms)."""
    if not seconds:
        raise ValueError("no latencies to summarise")
    ms = [s * 1000.0 for s in seconds]
    return LatencySummary(
        n=len(ms),
        mean_ms=round(sum(ms) / len(ms), 1),
        p50_ms=round(percentile(ms, 50), 1),
        p95_ms=round(percentile(ms, 95), 1),
        p99_ms=round(percentile(ms, 99), 1),
        max_ms=round(max(ms), 1),
    )


def rate(count: int, seconds: float) -> float:
    """Items per second; 0 when nothing was timed."""
    return count / seconds if seconds > 0 else 0.0


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator`` rounded to 3 places; NaN when the denominator is not positive."""
    return round(numerator / denominator, 3) if denominator > 0 else float("nan")


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN without both classes."""
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores but {len(labels)} labels")
    positives = sum(1 for label in labels if label == 1)
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    values = np.asarray(scores, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    start = 0
    while start < len(values):  # average rank over each run of ties
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    positive_rank_sum = float(ranks[np.asarray(labels) == 1].sum())
    return (positive_rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def meets(value: float, target: float, *, higher_is_better: bool = True) -> bool:
    """Whether a measured ``value`` meets ``target`` (False for NaN)."""
    if math.isnan(value):
        return False
    return value >= target if higher_is_better else value <= target
