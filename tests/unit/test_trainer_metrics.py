"""Metrics (AUROC, the high-sensitivity operating point) and the promotion gate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxr_triage.labels import LABELS
from trainer.evaluate import summary
from trainer.gate import decide
from trainer.metrics import COMPETITION, operating_point, per_label_auroc, report, threshold_for_sensitivity


@pytest.mark.parametrize("target", [0.5, 0.8, 0.95, 1.0])
def test_threshold_is_the_highest_that_reaches_the_target(target: float) -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 200).astype(np.float64)
    score = np.clip(truth * 0.3 + rng.random(200) * 0.7, 0, 1)
    threshold = threshold_for_sensitivity(truth, score, target)
    assert operating_point(truth, score, threshold).sensitivity >= target
    # no study scores between the threshold and the next score up, so raising it loses a positive
    above = np.sort(score[score > threshold])
    higher = above[0] + 1e-12 if above.size else math.inf
    assert operating_point(truth, score, higher).sensitivity < target
    # it sits between two scores, so tiny numeric differences (torch vs ONNX Runtime) do not change the counts
    assert operating_point(truth, score - 1e-7, threshold).sensitivity >= target


def test_operating_point_counts() -> None:
    truth = np.array([1, 1, 1, 0, 0, np.nan])
    score = np.array([0.9, 0.6, 0.2, 0.7, 0.1, 0.99])
    op = operating_point(truth, score, 0.5)
    assert (op.sensitivity, op.specificity, op.precision) == (2 / 3, 0.5, 2 / 3)
    assert op.f1 == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))


def test_per_label_auroc_skips_labels_without_both_classes() -> None:
    n = 6
    truth = np.full((n, len(LABELS)), np.nan)
    truth[:, 0] = [1, 1, 0, 0, 1, 0]  # No Finding: both classes
    truth[:, 2] = [1, 1, 1, np.nan, 1, 1]  # Cardiomegaly: positives only
    probabilities = np.tile(np.linspace(0.1, 0.9, n)[:, None], (1, len(LABELS)))
    result = per_label_auroc(probabilities, truth)
    assert set(result) == {"No Finding"}


def test_report_uses_the_priority_as_abnormal_score_and_serialises_nan_as_null() -> None:
    probabilities = np.full((4, len(LABELS)), 0.1)
    probabilities[:, 0] = [0.9, 0.8, 0.1, 0.2]  # confident "No Finding" on the first two
    abnormal = np.array([0, 0, 1, 1], dtype=np.float64)
    truth = np.full((4, len(LABELS)), np.nan)
    result = report(probabilities, truth, abnormal, target_sensitivity=0.95)
    assert result.auroc_abnormal == 1.0
    assert result.operating.sensitivity == 1.0 and result.operating.specificity == 1.0
    as_json = summary(result)
    assert as_json["auroc_macro"] is None and as_json["auroc_per_label"] == {}


def test_gate() -> None:
    common = {"margin": 0.005, "target_sensitivity": 0.95}
    assert decide(challenger_auroc=0.80, challenger_sensitivity=0.96, champion_auroc=None, **common).passed
    assert decide(challenger_auroc=0.796, challenger_sensitivity=0.95, champion_auroc=0.80, **common).passed
    worse = decide(challenger_auroc=0.794, challenger_sensitivity=0.99, champion_auroc=0.80, **common)
    assert not worse.passed and "macro AUROC" in worse.reasons[0]
    insensitive = decide(challenger_auroc=0.9, challenger_sensitivity=0.94, champion_auroc=0.8, **common)
    assert not insensitive.passed and "sensitivity" in insensitive.reasons[0]
    assert not decide(
        challenger_auroc=math.nan, challenger_sensitivity=1.0, champion_auroc=None, **common
    ).passed
    assert not decide(
        challenger_auroc=0.9, challenger_sensitivity=math.nan, champion_auroc=None, **common
    ).passed


def test_competition_auroc_is_the_mean_over_the_five_findings_only_when_all_five_are_defined() -> None:
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 2, (40, len(LABELS))).astype(np.float64)
    probabilities = np.clip(truth * 0.6 + rng.uniform(0, 0.5, truth.shape), 0, 1)
    full = report(probabilities, truth, truth[:, 1])
    five = [full.auroc_per_label[label] for label in COMPETITION]
    assert full.auroc_competition == pytest.approx(np.mean(five)) and summary(full)["auroc_competition"]
    truth[:, LABELS.index("Edema")] = 1.0  # Edema: positives only, no AUROC
    assert math.isnan(report(probabilities, truth, truth[:, 1]).auroc_competition)
