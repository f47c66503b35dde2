"""The recipe study's section of docs/experiments.md: written from MLflow rows, replacing only itself."""

from __future__ import annotations

from pathlib import Path

from trainer.experiments import CVRow, write_cv_section


def _row(recipe: str, mean: float) -> CVRow:
    metrics = {"cv_auroc_abnormal_mean": mean, "cv_auroc_abnormal_sd": 0.05,
               "cv_NIH-ChestXray14/auroc_abnormal_mean": mean - 0.08, "cv_seconds": 1500.0}  # fmt: skip
    params = {"architecture": "resnet18", "input_size": "128", "epochs": "12", "loss": "asymmetric"}
    return CVRow(recipe, metrics, params, {"auroc_abnormal": [mean - 0.05, mean + 0.05]}, 0)


def test_the_section_replaces_the_old_one_and_keeps_the_others(tmp_path: Path) -> None:
    out = tmp_path / "experiments.md"
    out.write_text("# Experiments\n\nintro\n\n## Recipe study (old)\n\nold table\n\n## amp\n\nGPU rows\n")
    write_cv_section([_row("resnet18-128-asl", 0.70)], out)
    text = out.read_text()
    assert "old table" not in text and text.count("## Recipe study") == 1
    assert text.index("intro") < text.index("## Recipe study") < text.index("## amp") and "GPU rows" in text
    row = next(line for line in text.splitlines() if line.startswith("| resnet18-128-asl"))
    assert "0.700 ± 0.050" in row and "0.620" in row and "loss=asymmetric" in row and "| 25.0 |" in row
    assert (tmp_path / "experiments" / "recipes-cv.png").stat().st_size > 0
    write_cv_section([], out)  # again, with nothing run: says so, still once
    assert out.read_text().count("## Recipe study") == 1 and "Not run yet" in out.read_text()


def test_saved_results_are_merged_with_mlflow_newest_first_and_survive_an_empty_instance(
    tmp_path: Path,
) -> None:
    from dataclasses import replace

    from trainer.experiments import load_cv_results, merge_cv_results

    saved_file = tmp_path / "recipes-cv.json"
    old = [replace(_row("resnet18-128", 0.68), started=10), replace(_row("resnet18-224", 0.66), started=10)]
    merge_cv_results([], old, saved_file)
    rerun = replace(_row("resnet18-224", 0.71), started=20)
    rows = merge_cv_results(load_cv_results(saved_file), [rerun], saved_file)
    assert [(r.recipe, r.metrics["cv_auroc_abnormal_mean"]) for r in rows] == [
        ("resnet18-224", 0.71),
        ("resnet18-128", 0.68),
    ]
    # A fresh MLflow instance with nothing in it: the file still gives both rows.
    assert (
        load_cv_results(saved_file) == merge_cv_results(load_cv_results(saved_file), [], saved_file) == rows
    )


def test_the_shortcut_probe_tells_a_contrast_stretched_source_apart_until_equalised() -> None:
    import numpy as np
    from scipy.ndimage import gaussian_filter

    from trainer.shortcut import _cv_auroc, equalised, features

    rng = np.random.default_rng(0)
    smooth = np.stack([gaussian_filter(rng.normal(size=(64, 64)), 3) for _ in range(60)])
    scaled = (smooth - smooth.min(axis=(1, 2), keepdims=True)) / np.ptp(smooth, axis=(1, 2), keepdims=True)
    pixels = np.round(scaled * 127).astype(np.uint8)[:, None]  # 128 levels
    y = np.arange(60) % 2
    pixels[y == 1] *= 2  # the "enhanced" source: contrast doubled, no two levels merged
    groups = [str(i) for i in range(60)]
    served = features(pixels[:, 0] / 255.0)["grey levels"]
    after = features(equalised(pixels))["grey levels"]
    assert _cv_auroc(served, y, groups, seed=0) > 0.95
    assert _cv_auroc(after, y, groups, seed=0) < 0.75


def test_the_probe_on_the_public_set_finds_the_mhh_source_and_the_report_shows_it(tmp_path: Path) -> None:
    import json

    import pytest
    from click.testing import CliRunner

    from trainer.experiments import main
    from trainer.settings import DEFAULT_DATA

    if not (DEFAULT_DATA / "labels.csv").is_file():
        pytest.skip("the public sample set is not beside the project")
    out, results = tmp_path / "experiments.md", tmp_path / "probe.json"
    args = [
        "shortcut",
        "--data",
        str(DEFAULT_DATA),
        "--size",
        "64",
        "--out",
        str(out),
        "--results",
        str(results),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    probe = json.loads(results.read_text())
    assert probe["source"] == "MHH-COVID19-image-repository" and probe["n_source"] == 102
    assert probe["auroc"]["as served"]["grey levels"] > 0.9  # the shortcut is there to find
    row = next(line for line in out.read_text().splitlines() if line.startswith("| grey levels |"))
    assert f"{probe['auroc']['equalised']['grey levels']:.3f}" in row
