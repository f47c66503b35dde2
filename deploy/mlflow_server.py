"""The MLflow tracking and registry server: SQLite backend and local artifacts under ``$CXR_HOME/mlflow``."""

from __future__ import annotations

import sys

from cxr_triage.settings import Settings
from deploy.spec import Launch, SetupError


class MlflowSetupError(SetupError):
    """CXR_MLFLOW_TRACKING_URI names no server this stack could start."""


def prepare(settings: Settings) -> Launch:
    """Listen at the host and port of CXR_MLFLOW_TRACKING_URI."""
    try:
        address = settings.mlflow_address
    except ValueError as exc:
        raise MlflowSetupError(f"CXR_MLFLOW_TRACKING_URI is not an http://host:port URL: {exc}") from exc
    settings.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{settings.mlflow_db}",
        "--default-artifact-root",
        str(settings.mlflow_artifacts),
        "--host",
        address.host,
        "--port",
        str(address.port),
        # One worker: the server only records runs and serves the registry; 2 cores have better uses.
        "--workers",
        "1",
    ]
    return Launch(argv=argv, cwd=settings.mlflow_dir)
