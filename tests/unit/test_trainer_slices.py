"""Slices with patient-level bootstrap intervals, the regression set, temperature scaling, demographics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cxr_triage.labels import LABELS
from trainer import calibration, regression, slices
from trainer.data.manifest import Manifest
from trainer.data.sources import Example, demographics
from trainer.models import ModelSpec, build_model


def _example(
    i: int, *, abnormal: float, patient: str, finding: str | None = None, **extra: object
) -> Example:
    labels = [math.nan] * len(LABELS)
    labels[0] = 1.0 - abnormal
    if finding:
        labels[LABELS.index(finding)] = 1.0
    return Example(
        Path(f"/x/{i}.png"), f"{i}.png", tuple(labels), patient, "S", "t", abnormal=abnormal, **extra
    )  # type: ignore[arg-type]


def test_demographics_read_each_sources_spelling_and_leave_the_unreadable_unknown() -> None:
    assert demographics("Male", "48", "PA") == {"sex": "male", "age": 48.0, "view": "PA"}
    assert demographics("F", "061Y", "ap") == {"sex": "female", "age": 61.0, "view": "AP"}
    unknown = demographics("", "old", "LL")
    assert unknown["sex"] == "" and math.isnan(unknown["age"]) and unknown["view"] == ""  # type: ignore[arg-type]


def test_slices_cover_each_attribute_and_intervals_contain_the_estimate() -> None:
    rng = np.random.default_rng(0)
    examples, scores = [], []
    for i in range(120):
        abnormal = float(i % 3 != 0)
        examples.append(_example(
            i, abnormal=abnormal, patient=f"p{i // 2}", finding="Edema" if abnormal and i % 2 else None,
            sex="female" if i % 4 < 2 else "male", age=float(20 + i % 70), view="AP" if i % 5 == 0 else "PA",
        ))  # fmt: skip
        scores.append(rng.uniform(0.4, 1.0) if abnormal else rng.uniform(0.0, 0.6))
    manifest = Manifest(tuple(examples))
    result = slices.evaluate_slices(np.array(scores), manifest, threshold=0.5, rounds=200)
    assert {"source:S", "sex:female", "sex:male", "age:<40", "age:40-59", "view:AP", "view:PA",
            "finding:Edema"} <= set(result)  # fmt: skip
    assert "finding:Pneumothorax" not in result  # no such study: no slice
    edema = result["finding:Edema"]
    assert edema["n_normal"] == 40 and edema["n_abnormal"] == 40  # Edema studies beside every normal one
    for entry in result.values():
        for metric in ("auroc_abnormal", "sensitivity", "specificity"):
            e = entry[metric]
            if e["ci_low"] is not None:  # type: ignore[index]
                assert e["ci_low"] <= e["value"] <= e["ci_high"]  # type: ignore[index,operator]
    whole = result["source:S"]["auroc_abnormal"]
    assert whole["ci_high"] - whole["ci_low"] < 0.2  # type: ignore[index,operator]


def test_the_bootstrap_resamples_patients_not_images() -> None:
    # Two patients with 50 identical films each: resampling images would give a tight interval around 0.5;
    # resampling patients gives 0 (both from patient a), 0.5 or 1 (both from b).
    patients = np.array(["a"] * 50 + ["b"] * 50)
    values = np.array([0.0] * 50 + [1.0] * 50)
    low, high = slices.bootstrap(lambda rows: float(values[rows].mean()), patients, rounds=400,
                                 rng=np.random.default_rng(1))  # fmt: skip
    assert (low, high) == (0.0, 1.0)


def test_a_small_slice_is_listed_without_an_interval() -> None:
    manifest = Manifest(tuple(_example(i, abnormal=float(i > 1), patient=f"p{i}") for i in range(4)))
    result = slices.evaluate_slices(np.array([0.1, 0.2, 0.8, 0.9]), manifest, threshold=0.5)
    entry = result["source:S"]
    assert entry["n"] == 4 and entry["auroc_abnormal"] == {"value": 1.0, "ci_low": None, "ci_high": None}


def test_the_regression_set_keeps_earlier_misses_and_hides_paths() -> None:
    manifest = Manifest(tuple(_example(i, abnormal=1.0, patient=f"p{i}") for i in range(6)))
    keys = regression.study_keys(manifest)
    assert all("png" not in k and len(k) == 16 for k in keys) and len(set(keys)) == 6
    champion_wrong = regression.errors(np.array([0.9, 0.9, 0.1, 0.9, 0.9, 0.9]), manifest.abnormal(), 0.5)
    earlier = [keys[0]]  # a study an earlier champion missed and this champion gets right
    kept = regression.merged(earlier, [k for k, w in zip(keys, champion_wrong, strict=True) if w])
    assert kept == [keys[0], keys[2]]
    brings_back = regression.errors(np.array([0.1, 0.9, 0.9, 0.9, 0.9, 0.9]), manifest.abnormal(), 0.5)
    tie = regression.check(kept, manifest, challenger_wrong=brings_back, champion_wrong=champion_wrong)
    assert tie.passed and tie.to_dict() == {"n": 2, "challenger_errors": 1, "champion_errors": 1}
    worse = regression.errors(np.array([0.1, 0.9, 0.1, 0.9, 0.9, 0.9]), manifest.abnormal(), 0.5)
    assert not regression.check(kept, manifest, challenger_wrong=worse, champion_wrong=champion_wrong).passed


def test_temperatures_fix_overconfidence_without_changing_the_ranking_and_fold_into_the_network() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 1.5, (2000, len(LABELS)))
    truth = (rng.uniform(size=true_logits.shape) < 1 / (1 + np.exp(-true_logits))).astype(np.float64)
    overconfident = 1 / (1 + np.exp(-4 * true_logits))  # every logit 4x too large
    temperatures = calibration.fit_temperatures(overconfident, truth)
    assert np.allclose(temperatures, 4.0, rtol=0.25)
    fixed = calibration.apply_temperatures(overconfident, temperatures)
    assert calibration.mean_nll(fixed, truth) < calibration.mean_nll(overconfident, truth)
    for label in range(len(LABELS)):  # the ranking, hence every AUROC, is unchanged
        assert roc_auc_score(truth[:, label], fixed[:, label]) == pytest.approx(
            roc_auc_score(truth[:, label], overconfident[:, label]),
            abs=1e-4,  # float32 rounding makes a few ties
        )
    # Folded into the last layer, the network itself now outputs logits / T.
    model = build_model(ModelSpec(architecture="resnet18", input_size=32)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x).numpy()
        calibration.fold_into_model(model, temperatures)
        after = model(x).numpy()
    np.testing.assert_allclose(after, before / temperatures[None, :], rtol=1e-4, atol=1e-5)


def test_a_label_with_too_few_of_a_class_keeps_temperature_one() -> None:
    truth = np.zeros((50, len(LABELS)))
    truth[:2, 0] = 1
    probabilities = np.full(truth.shape, 0.3)
    assert np.all(calibration.fit_temperatures(probabilities, truth) == 1.0)
    with pytest.raises(calibration.CalibrationError):
        calibration.fold_into_model(torch.nn.Conv2d(1, 1, 1), np.ones(len(LABELS)))


def test_the_fast_auroc_equals_scikit_learns_with_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(100):
        y = rng.integers(0, 2, 40)
        s = np.round(rng.uniform(size=40), 1)  # many ties
        if 0 < y.sum() < y.size:
            assert slices._auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert math.isnan(slices._auroc(np.ones(5), np.arange(5.0)))
