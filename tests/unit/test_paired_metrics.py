"""Paired online metrics: hand-checkable numbers, and a shuffled challenger is significantly worse."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from stream_processors.paired_metrics import arm_metrics, paired_metrics, rank_auroc, reading_of
from tests.paired_factories import cohort, example


def test_hand_checked_aurocs_operating_points_and_latencies() -> None:
    examples = [
        example(0, abnormal=True, champion=0.9, challenger=0.9, challenger_threshold=0.85),
        example(1, abnormal=True, champion=0.6, challenger=0.8, challenger_threshold=0.85),
        example(2, abnormal=False, champion=0.7, challenger=0.3, challenger_threshold=0.85),
        example(3, abnormal=False, champion=0.1, challenger=0.2, challenger_threshold=0.85),
        example(4, abnormal=False, champion=0.1, challenger=None),  # not read by the challenger: not paired
    ]
    m = paired_metrics(examples, champion="1", challenger="2", n_resamples=200)
    assert (m.paired, m.abnormal, m.normal) == (4, 2, 2)
    # Champion: 3 of the 4 (abnormal, normal) pairs ordered right; the challenger all 4.
    assert m.auroc_champion == pytest.approx(0.75) and m.auroc_challenger == pytest.approx(1.0)
    assert m.auroc_difference == pytest.approx(0.25)
    # Champion at 0.5 calls 0.9, 0.6, 0.7 abnormal; the challenger at its own 0.85 only 0.9.
    assert (m.sensitivity_champion, m.specificity_champion) == (1.0, 0.5)
    assert (m.sensitivity_challenger, m.specificity_challenger) == (0.5, 1.0)
    assert (m.latency_p50_champion_s, m.latency_p50_challenger_s) == (2.0, 3.0)
    assert m.as_metrics()["paired"] == 4.0 and "champion_version" not in m.as_metrics()


def test_rank_auroc_equals_scikit_learn_with_ties_and_is_nan_for_one_class() -> None:
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 2, size=300)
    score = np.round(rng.random(300), 1)  # many ties
    assert rank_auroc(truth, score) == pytest.approx(roc_auc_score(truth, score))
    assert np.isnan(rank_auroc(np.ones(5, dtype=np.int64), np.arange(5.0)))


def test_a_shuffled_challenger_is_significantly_worse() -> None:
    m = paired_metrics(cohort(300, "shuffled"), champion="1", challenger="2")
    assert m.auroc_champion is not None and m.auroc_champion > 0.85
    assert m.auroc_challenger is not None and abs(m.auroc_challenger - 0.5) < 0.1
    assert m.difference_ci_high is not None and m.difference_ci_high < -0.2


@pytest.mark.parametrize("kind", ["equal", "better"])
def test_an_equal_or_better_challenger_is_not_worse(kind: str) -> None:
    m = paired_metrics(cohort(300, kind), champion="1", challenger="2")
    assert m.difference_ci_low is not None and m.difference_ci_low > -0.02
    if kind == "equal":
        assert m.auroc_difference == 0.0 and m.difference_ci_high == 0.0
    else:
        assert m.auroc_difference is not None and m.auroc_difference > 0


def test_the_interval_is_the_same_for_the_same_examples() -> None:
    examples = cohort(120, "better")
    first = paired_metrics(examples, champion="1", challenger="2")
    assert paired_metrics(examples, champion="1", challenger="2") == first


def test_one_class_only_has_no_auroc_nor_interval() -> None:
    examples = [example(i, abnormal=True, champion=0.8, challenger=0.7) for i in range(5)]
    m = paired_metrics(examples, champion="1", challenger="2")
    assert (m.auroc_champion, m.difference_ci_low, m.sensitivity_challenger, m.specificity_challenger) == (
        None,
        None,
        1.0,
        None,
    )


def test_arm_metrics_count_only_the_studies_the_model_ordered() -> None:
    examples = [
        example(0, abnormal=True, champion=0.9, challenger=0.2, arm="canary", read_s=60),
        example(1, abnormal=True, champion=0.9, challenger=0.8, arm="canary", read_s=180),
        example(2, abnormal=False, champion=0.1, challenger=0.1, arm="canary", read_s=300),
        example(3, abnormal=True, champion=0.9, challenger=0.9, read_s=30),
    ]
    canary = arm_metrics(examples, model_version="2", arm="canary")
    assert (canary.examples, canary.abnormal, canary.sensitivity, canary.specificity) == (3, 2, 0.5, 1.0)
    assert canary.time_to_read_p50_s == 180.0 and canary.latency_p50_s == 2.0
    champion = arm_metrics(examples, model_version="1", arm="champion")
    assert (champion.examples, champion.time_to_read_p50_s) == (1, 30.0)
    # The canary's studies were read by the champion in shadow: paired on all four.
    assert reading_of(examples[0], "1") is not None
    assert paired_metrics(examples, champion="1", challenger="2", n_resamples=100).paired == 4
