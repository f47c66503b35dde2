"""The reading-shift simulation checked against queueing theory: FIFO against Erlang C (M/M/c), and a perfect
classifier's strict priority order against Cobham's non-preemptive priority formula, each within the
simulation's 95% confidence interval (30 seeded runs of 20 000 studies, the first 2 000 of each dropped as
warm-up)."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest

from bench.simulate.queueing import (
    Fifo,
    Pool,
    Triage,
    cobham_mean_waits,
    erlang_c,
    mmc_mean_wait,
    poisson_shift,
    reading_times,
    waits,
)
from bench.simulate.report import Scenario, binormal_pool, run_shifts, summarise
from cxr_triage.sla import SlaPolicy, Tier

RADIOLOGISTS, MEAN_READING_MIN, UTILISATION, PREVALENCE = 2, 10.0, 0.8, 0.3
RATE = UTILISATION * RADIOLOGISTS / MEAN_READING_MIN  # studies per minute
RUNS, STUDIES, WARM_UP = 30, 20_000, 2_000
# A perfect classifier: every abnormal image critical, every normal one routine.
PERFECT = Pool(
    priority=np.array([1.0, 0.0]), abnormal=np.array([True, False]), tier=(Tier.CRITICAL, Tier.ROUTINE)
)


def _interval(samples: list[float]) -> tuple[float, float]:
    x = np.asarray(samples)
    half = NormalDist().inv_cdf(0.975) * x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


@pytest.fixture(scope="module")
def runs() -> dict[str, list[float]]:
    rng = np.random.default_rng(20261203)
    found: dict[str, list[float]] = {"fifo": [], "abnormal": [], "normal": []}
    for _ in range(RUNS):
        reading = reading_times(rng, STUDIES, kind="exponential", mean_min=MEAN_READING_MIN)
        shift = poisson_shift(
            rng, PERFECT, n=STUDIES, rate_per_min=RATE, prevalence=PREVALENCE, reading=reading
        )
        steady = slice(WARM_UP, None)
        found["fifo"].append(float(waits(shift, Fifo(shift), RADIOLOGISTS)[steady].mean()))
        strict = waits(shift, Triage(shift, SlaPolicy(), aging=False), RADIOLOGISTS)[steady]
        abnormal = shift.abnormal[steady]
        found["abnormal"].append(float(strict[abnormal].mean()))
        found["normal"].append(float(strict[~abnormal].mean()))
    return found


def test_fifo_matches_erlang_c(runs: dict[str, list[float]]) -> None:
    low, high = _interval(runs["fifo"])
    expected = mmc_mean_wait(RATE, 1 / MEAN_READING_MIN, RADIOLOGISTS)
    assert low <= expected <= high, (low, expected, high)


def test_a_perfect_classifier_without_aging_matches_cobham(runs: dict[str, list[float]]) -> None:
    abnormal, normal = cobham_mean_waits(
        [PREVALENCE * RATE, (1 - PREVALENCE) * RATE], 1 / MEAN_READING_MIN, RADIOLOGISTS
    )
    for measured, expected in ((runs["abnormal"], abnormal), (runs["normal"], normal)):
        low, high = _interval(measured)
        assert low <= expected <= high, (low, expected, high)
    assert abnormal < mmc_mean_wait(RATE, 1 / MEAN_READING_MIN, RADIOLOGISTS) < normal


def test_erlang_c_known_values_and_refusals() -> None:
    assert erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: the probability of waiting is the load
    assert erlang_c(2, 1.6) == pytest.approx(0.7111, abs=1e-4)
    with pytest.raises(ValueError, match="below the 2 servers"):
        erlang_c(2, 2.0)


def test_aging_caps_what_strict_priority_makes_normal_studies_wait() -> None:
    """Routine studies wait at most their tier's allowance plus the work ahead; without aging they starve."""
    rng = np.random.default_rng(7)
    reading = reading_times(rng, 3_000, kind="lognormal", mean_min=MEAN_READING_MIN)
    shift = poisson_shift(rng, PERFECT, n=3_000, rate_per_min=0.95 * RADIOLOGISTS / MEAN_READING_MIN,
                          prevalence=0.5, reading=reading)  # fmt: skip
    sla = SlaPolicy(routine_max_wait_min=120.0)
    aged = waits(shift, Triage(shift, sla), RADIOLOGISTS)
    strict = waits(shift, Triage(shift, sla, aging=False), RADIOLOGISTS)
    fifo = waits(shift, Fifo(shift), RADIOLOGISTS)
    assert fifo.max() <= aged.max() < strict.max()  # FIFO minimises the maximum wait on every sample path
    assert aged[shift.abnormal].mean() < fifo[shift.abnormal].mean()


def test_the_aging_horizon_keeps_the_longest_wait_near_fifos() -> None:
    """Tier allowances alone let a routine study wait out a busy shift's abnormal-looking arrivals; the 25-minute
    horizon (no study overtaken by one that came more than 25 min later) keeps the price small."""
    pool = binormal_pool(np.random.default_rng(1), 0.9, n=4000, prevalence=0.5, tier_for=SlaPolicy().tier_for)
    scenario = Scenario(radiologists=2, utilisation=0.85, prevalence=0.3, reading="lognormal",
                        mean_reading_min=5.0, sd_reading_min=None, studies_per_run=500, runs=12, seed=7)  # fmt: skip
    horizon = summarise(run_shifts(pool, scenario, SlaPolicy()))
    tiers_only = summarise(run_shifts(pool, scenario, SlaPolicy(aging_horizon_min=None)))
    assert horizon["fifo_max_wait_min"] == tiers_only["fifo_max_wait_min"]  # the same shifts
    assert horizon["max_wait_increase"] < 0.4 < 1.0 < tiers_only["max_wait_increase"]
    assert (
        horizon["reduction_abnormal"] > 0.3
        and tiers_only["reduction_abnormal"] > horizon["reduction_abnormal"]
    )
