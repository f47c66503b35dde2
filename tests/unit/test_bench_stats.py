"""Benchmark arithmetic: percentiles, latency summaries, ratios, AUROC, target checks."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from bench.stats import auroc, meets, percentile, rate, ratio, summarise_ms


@pytest.mark.parametrize("q", [0, 1, 25, 50, 95, 99, 100])
def test_percentile_matches_numpy_linear_interpolation(q: float) -> None:
    values = [random.Random(i).uniform(0, 100) for i in range(37)]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_edge_cases() -> None:
    assert percentile([5.0], 99) == 5.0
    assert percentile([1.0, 2.0], 50) == 1.5
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summary_is_in_milliseconds() -> None:
    summary = summarise_ms([0.010, 0.020, 0.030, 0.040, 1.0])
    assert summary.n == 5
    assert summary.p50_ms == 30.0
    assert summary.max_ms == 1000.0
    assert summary.mean_ms == pytest.approx(220.0)
    assert summary.p99_ms == pytest.approx(float(np.percentile([10, 20, 30, 40, 1000], 99)), abs=0.1)
    with pytest.raises(ValueError):
        summarise_ms([])


def test_rate_and_ratio() -> None:
    assert rate(10, 2.0) == 5.0
    assert rate(10, 0.0) == 0.0
    assert ratio(17.0, 20.0) == 0.85
    assert math.isnan(ratio(1.0, 0.0))


def _auroc_by_pairs(scores: list[float], labels: list[int]) -> float:
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_extremes_and_ties() -> None:
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    assert math.isnan(auroc([0.1, 0.2], [1, 1]))
    with pytest.raises(ValueError):
        auroc([0.1], [0, 1])


def test_auroc_equals_the_pairwise_definition_with_ties() -> None:
    rng = random.Random(11)
    scores = [round(rng.random(), 1) for _ in range(60)]  # one decimal: many ties
    labels = [rng.randint(0, 1) for _ in range(60)]
    assert auroc(scores, labels) == pytest.approx(_auroc_by_pairs(scores, labels))


def test_meets() -> None:
    assert meets(0.9, 0.85)
    assert not meets(0.8, 0.85)
    assert meets(900.0, 1000.0, higher_is_better=False)
    assert not meets(float("nan"), 0.85)
