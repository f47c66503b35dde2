"""The demo's epoch bar follows the MLflow run: its length from the run's ``epochs`` parameter, its count from
one validation metric an epoch; MLflow errors only make it wait."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow
import pytest
from tqdm import tqdm

from cxr_triage.settings import Settings
from deploy import demo as demo_module
from deploy.demo import Demo


class _Training:
    """A training process that runs for ``polls`` polls."""

    def __init__(self, polls: int) -> None:
        self.polls = polls

    def poll(self) -> int | None:
        self.polls -= 1
        return None if self.polls >= 0 else 0


class _Client:
    """MLflow as the trainer leaves it: no run, then a run with its parameters, then one metric an epoch."""

    def __init__(self, **_: Any) -> None:
        self.calls = 0

    def search_experiments(self) -> list[Any]:
        self.calls += 1
        if self.calls == 2:
            raise ConnectionError("MLflow restarting")
        return [SimpleNamespace(experiment_id="1")]

    def search_runs(self, **_: Any) -> list[Any]:
        if self.calls < 3:
            return []
        epochs_done = min(self.calls - 3, 3)
        run = SimpleNamespace(
            info=SimpleNamespace(run_id="r1"),
            data=SimpleNamespace(
                params={"epochs": "3", "lr": "0.001"},
                metrics={"train_loss": 0.5, "val_auroc_abnormal": 0.7} if epochs_done else {},
            ),
        )
        self.epochs_done = epochs_done
        return [run]

    def get_metric_history(self, run_id: str, key: str) -> list[Any]:
        assert (run_id, key) == ("r1", "val_auroc_abnormal")
        return [object()] * self.epochs_done


def test_the_epoch_bar_takes_its_length_from_the_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(mlflow, "MlflowClient", _Client)
    monkeypatch.setattr(demo_module, "TRAIN_POLL_S", 0.0)
    shown = io.StringIO()
    bars: list[tqdm[Any]] = []

    def bar(total: int | None, desc: str) -> tqdm[Any]:
        made = tqdm(total=total, desc=desc, file=shown, ncols=100, mininterval=0)
        bars.append(made)
        return made

    demo = Demo(settings=Settings(home=tmp_path), env={}, bars=True)
    monkeypatch.setattr(demo, "bar", bar)
    demo_module._watch_training(demo, _Training(polls=8), "[2/6] model")  # type: ignore[arg-type]

    (made,) = bars
    assert (made.total, made.n) == (3, 3)
    assert "3/3" in shown.getvalue() and "val AUROC 0.700" in shown.getvalue()
