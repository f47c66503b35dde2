"""Cross-validation's parts: patient-grouped stratified folds, thresholds chosen off the fold, the summary;
and how ``--recipe`` and ``--cv`` build the run from the command line."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from cxr_triage.labels import LABELS
from trainer import cv
from trainer.cli import train
from trainer.config import TrainConfig
from trainer.data.manifest import Manifest
from trainer.data.sources import Example
from trainer.errors import DataError


def _manifest(patients: int = 60, images_each: int = 2) -> Manifest:
    """Two sources; in A a third of the patients are normal, B is all abnormal (like MHH)."""
    rows = []
    for p in range(patients):
        source = "A" if p % 2 == 0 else "B"
        abnormal = 0.0 if source == "A" and p % 3 == 0 else 1.0
        for i in range(images_each):
            labels = (1.0 - abnormal, *([abnormal] * (len(LABELS) - 1)))
            rows.append(
                Example(
                    Path(f"/x/{p}-{i}.png"),
                    f"{p}-{i}.png",
                    labels,
                    f"patient{p}",
                    source,
                    "t",
                    abnormal=abnormal,
                )
            )
    return Manifest(tuple(rows))


def test_folds_partition_the_studies_by_patient_and_keep_each_source_normal_share() -> None:
    manifest = _manifest()
    folds = cv.fold_indices(manifest, 5, seed=7)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(manifest)))
    owner: dict[str, int] = {}
    for number, held in enumerate(folds):
        for index in held:
            patient = manifest.examples[index].patient_id
            assert owner.setdefault(patient, number) == number  # never in two folds
        normals = sum(manifest.examples[i].abnormal == 0 for i in held)
        assert 2 <= normals <= 4 * 2  # 10 normal patients (20 images) over 5 folds: about 4 each
    assert cv.fold_indices(manifest, 5, seed=7)[0].tolist() == folds[0].tolist()  # seeded


@pytest.mark.parametrize("k", [1, 61])
def test_impossible_fold_counts_are_refused(k: int) -> None:
    with pytest.raises(DataError, match="fold"):
        cv.fold_indices(_manifest(), k, seed=0)


def test_each_fold_threshold_is_chosen_without_that_fold() -> None:
    rng = np.random.default_rng(0)
    abnormal = rng.integers(0, 2, 90).astype(np.float32)
    scores = rng.uniform(size=90)
    folds = [np.arange(0, 30), np.arange(30, 60), np.arange(60, 90)]
    before = cv.nested_thresholds(scores, abnormal, folds, 0.95)
    changed = scores.copy()
    changed[:30] = rng.uniform(size=30)  # fold 1's own scores move
    after = cv.nested_thresholds(changed, abnormal, folds, 0.95)
    assert after[0] == before[0] and after[1:] != before[1:]


def test_scores_and_summary_per_source_leave_undefined_figures_out() -> None:
    manifest = _manifest(patients=12, images_each=1)
    abnormal = manifest.abnormal()
    probabilities = np.tile(abnormal[:, None], (1, len(LABELS))).astype(np.float32)
    probabilities[:, 0] = 1 - abnormal  # No Finding: a perfect model
    folds = [
        cv.score(probabilities[rows], manifest.subset(rows.tolist()), threshold=0.5, fold=n)
        for n, rows in enumerate((np.arange(0, 6), np.arange(6, 12)), start=1)
    ]
    assert folds[0].values["auroc_abnormal"] == 1.0 and folds[0].values["sensitivity"] == 1.0
    assert math.isnan(folds[0].per_source["B"]["auroc_abnormal"])  # B is all abnormal: no AUROC of its own
    summary = cv.mean_sd(folds)
    assert summary["auroc_abnormal"] == {"mean": 1.0, "sd": 0.0, "folds": 2.0}
    assert "B/auroc_abnormal" not in summary and summary["A/auroc_abnormal"]["mean"] == 1.0
    assert "tta_auroc_abnormal" not in summary  # no augmented scores given: left out, not a made-up value
    reversed_tta = cv.score(probabilities, manifest, threshold=0.5, tta=1 - probabilities)
    assert reversed_tta.values["tta_auroc_abnormal"] == 0.0 and reversed_tta.values["auroc_abnormal"] == 1.0


@pytest.fixture()
def captured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """``run_cv`` replaced: the test sees the TrainConfig and fold count the command built."""
    seen: dict[str, Any] = {}

    def fake_run_cv(*, cfg: TrainConfig, k: int, **_: Any) -> Any:
        seen.update(cfg=cfg, k=k)
        return cv.CVResult("run", k, [], {}, cv.FoldScores(0, 0, {}, {}), [])

    monkeypatch.setattr(cv, "run_cv", fake_run_cv)
    monkeypatch.setenv("CXR_HOME", str(tmp_path))
    return seen


def test_a_recipe_sets_the_run_and_options_given_win(captured: dict[str, Any], tmp_path: Path) -> None:
    args = ["--data", str(tmp_path), "--recipe", "resnet18-128", "--lr", "0.5", "--cv", "3", "--json"]
    result = CliRunner().invoke(train, args)
    assert result.exit_code == 0, result.output
    cfg = captured["cfg"]
    assert captured["k"] == 3
    assert (cfg.architecture, cfg.input_size, cfg.epochs, cfg.num_workers) == ("resnet18", 128, 12, 0)
    assert cfg.lr == 0.5  # given on the command line: wins over the recipe's 1e-3
    assert cfg.weight_decay == 1e-5  # neither: the option's default


def test_the_equalising_recipe_and_the_intensity_option_reach_the_model_spec(
    captured: dict[str, Any], tmp_path: Path
) -> None:
    args = ["--data", str(tmp_path), "--recipe", "resnet18-128-equalize", "--cv", "2"]
    assert CliRunner().invoke(train, args).exit_code == 0
    assert captured["cfg"].model_spec().intensity == "equalize"
    result = CliRunner().invoke(train, [*args, "--intensity", "clahe"])
    assert result.exit_code == 2 and "'clahe' is not one of 'none', 'equalize'" in result.output


def test_best_and_demo_name_chosen_recipes_and_unknown_ones_are_refused(
    captured: dict[str, Any], tmp_path: Path
) -> None:
    assert (
        CliRunner().invoke(train, ["--data", str(tmp_path), "--recipe", "best", "--cv", "2"]).exit_code == 0
    )
    result = CliRunner().invoke(train, ["--data", str(tmp_path), "--recipe", "fastest", "--cv", "2"])
    assert result.exit_code == 1 and "unknown recipe 'fastest'" in result.output


def test_cv_refuses_options_that_keep_a_model(captured: dict[str, Any], tmp_path: Path) -> None:
    result = CliRunner().invoke(train, ["--data", str(tmp_path), "--cv", "2", "--int8", "--promote"])
    assert result.exit_code == 2 and "--int8, --promote cannot go with it" in result.output
    assert "k" not in captured
