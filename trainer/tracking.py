"""MLflow: the tracking server's runs and the model registry (aliases ``champion`` / ``challenger``)."""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import mlflow
import numpy as np
import onnx
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from trainer.errors import RegistryError, TrackingUnavailable

logger = logging.getLogger(__name__)

CHAMPION: Final = "champion"
CHALLENGER: Final = "challenger"
MODEL_ARTIFACT: Final = "model"
ONNX_FILE: Final = "model.onnx"
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


def require_server(tracking_uri: str, timeout_s: float = 3.0) -> None:
    """Fail fast when an HTTP tracking server does not answer (MLflow's own client retries for minutes)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=timeout_s) as response:
            if response.status == 200:
                return
    except OSError:
        pass
    raise TrackingUnavailable(
        f"no MLflow server answers at {tracking_uri}: start it with `cxr-triage up --only mlflow` "
        "(or set CXR_MLFLOW_TRACKING_URI)"
    )


def client_for(tracking_uri: str) -> MlflowClient:
    """A client whose runs and registry are both on ``tracking_uri``.

    MLflow 3 defaults a missing registry URI to ``sqlite:///mlflow.db`` in the working directory, so both
    are set explicitly (and globally, for ``mlflow.onnx.log_model``).
    """
    require_server(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def ensure_experiment(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if client.tracking_uri.startswith("sqlite:///"):
        # Without a server, MLflow would put artifacts in ./mlruns of whatever the working directory is.
        database = Path(client.tracking_uri.removeprefix("sqlite:///"))
        location = (database.parent / "artifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def finish_run(client: MlflowClient, run_id: str, status: str) -> None:
    # MLflow prints the run's URL to stdout when a run ends; stdout is for the commands' --json output.
    with contextlib.redirect_stdout(sys.stderr):
        client.set_terminated(run_id, status)


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    # MLflow caps a param value at 6000 characters; a value is never that long here, but lists are shortened.
    items = [Param(key, str(value)[:500]) for key, value in params.items()]
    for start in range(0, len(items), 100):  # log_batch takes at most 100 params per call
        client.log_batch(run_id, params=items[start : start + 100])


def register_onnx(
    *,
    run_id: str,
    onnx_path: Path,
    registered_model: str,
    example: np.ndarray,
    example_output: np.ndarray,
    tags: dict[str, str],
) -> ModelVersion:
    """Log the ONNX file as the run's model (one self-contained file) and register it as a new version."""
    # The run context prints the run's URL when it closes (see finish_run).
    with contextlib.redirect_stdout(sys.stderr), mlflow.start_run(run_id=run_id):
        info = mlflow.onnx.log_model(
            onnx.load(str(onnx_path)),
            name=MODEL_ARTIFACT,
            registered_model_name=registered_model,
            signature=infer_signature(example, example_output),
            onnx_execution_providers=["CPUExecutionProvider"],
            # One file: Triton's runner and `evaluate` load model.onnx without a sidecar .data file.
            save_as_external_data=False,
        )
    client = MlflowClient(tracking_uri=mlflow.get_tracking_uri(), registry_uri=mlflow.get_registry_uri())
    version = str(info.registered_model_version)
    for key, value in tags.items():
        client.set_model_version_tag(registered_model, version, key, value)
    return client.get_model_version(registered_model, version)


@dataclass(frozen=True)
class ModelRef:
    name: str
    alias: str | None = None
    version: str | None = None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"


def parse_models_uri(uri: str) -> ModelRef | None:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> ModelRef; anything else -> None."""
    match = _MODELS_URI.match(uri)
    if match is None:
        return None
    return ModelRef(match["name"], alias=match["alias"], version=match["version"])


def version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def resolve(client: MlflowClient, ref: ModelRef) -> ModelVersion:
    if ref.alias:
        found = version_by_alias(client, ref.name, ref.alias)
        if found is None:
            raise RegistryError(f"registered model {ref.name!r} has no version with alias {ref.alias!r}")
        return found
    try:
        return client.get_model_version(ref.name, str(ref.version))
    except MlflowException as exc:
        raise RegistryError(f"registered model {ref.name!r} has no version {ref.version}") from exc


def download_onnx(client: MlflowClient, version: ModelVersion, target: Path) -> Path:
    """The version's ``model.onnx`` on local disk (downloaded into ``target``)."""
    # The version's own storage URI, not "models:/...": that form would resolve against the global registry.
    uri = client.get_model_version_download_uri(version.name, str(version.version))
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=uri, dst_path=str(target), tracking_uri=client.tracking_uri
    )
    path = Path(local) / ONNX_FILE
    if not path.is_file():
        raise RegistryError(f"model {version.name} v{version.version} holds no {ONNX_FILE}")
    return path
