"""The trainer's commands at the edge: bad input ends in one clear message (exit 1), never a traceback."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cxr_triage.labels import LABELS
from trainer.cli import evaluate, train


@pytest.fixture()
def bad_folder(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((64, 64), dtype=np.uint8), mode="L").save(tmp_path / "images/ok.png")
    with (tmp_path / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Path", *LABELS])
        writer.writerow(["images/ok.png", *(["0"] * len(LABELS))])
        writer.writerow(["images/gone.png", *(["1"] * len(LABELS))])
    return tmp_path


def test_train_names_the_bad_row_before_anything_starts(
    bad_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An unreachable tracking server: the data check must fail first, without contacting it.
    monkeypatch.setenv("CXR_MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    result = CliRunner().invoke(train, ["--data", str(bad_folder), "--workers", "0"])
    assert result.exit_code == 1
    assert "labels.csv line 3 (images/gone.png): image file not found" in result.output
    assert "Traceback" not in result.output


def test_evaluate_with_a_missing_model_file_is_a_clear_error(bad_folder: Path, tmp_path: Path) -> None:
    (bad_folder / "images/gone.png").write_bytes((bad_folder / "images/ok.png").read_bytes())
    result = CliRunner().invoke(
        evaluate, ["--data", str(bad_folder), "--model", str(tmp_path / "nothing.onnx")]
    )
    assert result.exit_code == 1
    assert "Error:" in result.output and "Traceback" not in result.output
