"""Trainer settings and the MLflow server component of the stack."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr_triage.settings import Settings
from deploy import mlflow_server
from deploy.components import build_components, select
from trainer.settings import TrainerSettings


def test_trainer_and_stack_share_one_tracking_uri(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CXR_MLFLOW_TRACKING_URI", raising=False)
    assert TrainerSettings(home=tmp_path).mlflow_tracking_uri == "http://127.0.0.1:15000"
    monkeypatch.setenv("CXR_MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert TrainerSettings(home=tmp_path).mlflow_tracking_uri == "http://tracking.example:5000"
    assert Settings(home=tmp_path).mlflow_tracking_uri == "http://tracking.example:5000"


def test_mlflow_component_uses_sqlite_and_local_artifacts_under_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CXR_MLFLOW_TRACKING_URI", "http://127.0.0.1:15123")
    settings = Settings(home=tmp_path, worker_count=1)
    (component,) = select(build_components(settings, {}), "mlflow")
    assert component.port == 15123 and component.ports == (15123,)
    launch = mlflow_server.prepare(settings)
    argv = launch.argv
    assert argv[1:4] == ["-m", "mlflow", "server"]
    assert argv[argv.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    assert argv[argv.index("--default-artifact-root") + 1] == str(tmp_path / "mlflow" / "artifacts")
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--port") + 1] == "15123"
    assert (tmp_path / "mlflow" / "artifacts").is_dir()


def test_a_file_tracking_uri_cannot_be_served_by_the_stack(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, mlflow_tracking_uri=f"file://{tmp_path}/mlruns")
    (component,) = select(build_components(settings, {}), "mlflow")
    with pytest.raises(mlflow_server.MlflowSetupError, match="CXR_MLFLOW_TRACKING_URI"):
        component.prepare()
