"""The MLflow tracking and registry server: SQLite backend and local artifacts under ``$CXR_HOME/mlflow``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from cxr_triage.settings import Settings
from deploy.spec import Launch

if TYPE_CHECKING:
    from trainer.settings import TrainerSettings


def _trainer_settings(settings: Settings) -> TrainerSettings:
    # The MLflow port is a trainer setting until the shared Settings gains it; the stack's own values win.
    from trainer.settings import TrainerSettings

    return TrainerSettings(**settings.model_dump())


def mlflow_port(settings: Settings) -> int:
    return _trainer_settings(settings).mlflow_port


def prepare(settings: Settings) -> Launch:
    trainer_settings = _trainer_settings(settings)
    trainer_settings.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{trainer_settings.mlflow_db}",
        "--default-artifact-root",
        str(trainer_settings.mlflow_artifacts),
        "--host",
        settings.host,
        "--port",
        str(trainer_settings.mlflow_port),
        # One worker: the server only records runs and serves the registry; 2 cores have better uses.
        "--workers",
        "1",
    ]
    return Launch(argv=argv, cwd=trainer_settings.mlflow_dir)
