"""The driver's epoch bar while Ray workers train: read from the MLflow run, never in the training's way."""

from __future__ import annotations

import io
import sys
import time
from types import SimpleNamespace
from typing import Any

import mlflow.tracking
import pytest

from trainer import epoch_progress


class _Client:
    """The run as rank 0 leaves it after two epochs; the first call fails as a restarting server would."""

    def __init__(self, **_: Any) -> None:
        self.calls = 0

    def get_metric_history(self, run_id: str, key: str) -> list[Any]:
        assert run_id == "r1"
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("MLflow restarting")
        values = {"val_auroc_abnormal": [0.61, 0.72], "train_loss": [0.69, 0.55]}[key]
        return [SimpleNamespace(step=step, value=value) for step, value in enumerate(values, start=1)]


def test_the_bar_ends_at_the_last_logged_epoch_with_its_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mlflow.tracking, "MlflowClient", _Client)
    monkeypatch.setattr(epoch_progress, "POLL_S", 0.01)
    shown = io.StringIO()
    monkeypatch.setattr(sys, "stderr", shown)
    info = {"tracking_uri": "http://127.0.0.1:1", "run_id": "r1"}
    with epoch_progress.epoch_bar(info, epochs=3, enabled=True):
        time.sleep(0.3)  # training: the thread polls through MLflow's restart
    assert "epochs:" in shown.getvalue()
    assert "2/3" in shown.getvalue() and "loss 0.550 val AUROC 0.720" in shown.getvalue()


def test_no_run_or_no_bar_wanted_draws_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    shown = io.StringIO()
    monkeypatch.setattr(sys, "stderr", shown)
    with epoch_progress.epoch_bar(None, epochs=3, enabled=True):
        pass
    with epoch_progress.epoch_bar({"tracking_uri": "x", "run_id": "r1"}, epochs=3, enabled=False):
        pass
    assert shown.getvalue() == ""
