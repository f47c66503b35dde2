"""Trainer lifecycle against real services: the stack's MLflow server and Triton, a local Ray cluster.

One tiny training run (2 Ray workers, DDP over gloo, 64 px, 2 epochs of 3 steps) feeds every test: metrics and
artifacts tracked, model registered as challenger, ``evaluate`` JSON, then promote / rollback switching the
version Triton serves. Commands run as subprocesses, the way a user runs them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import onnx
import pytest
from mlflow.tracking import MlflowClient

from cxr_triage.labels import LABELS
from cxr_triage.priority import priority
from tests.integration.conftest import free_port

PUBLIC = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "cxr-public"
MODEL = "cxr_classifier"
REQUIRED_KEYS = {"n", "auroc_macro", "auroc_abnormal", "auroc_per_label", "sensitivity", "specificity", "threshold", "model_version"}  # fmt: skip

pytestmark = pytest.mark.integration


@dataclass
class Services:
    env: dict[str, str]

    @property
    def tracking_uri(self) -> str:
        return self.env["CXR_MLFLOW_TRACKING_URI"]

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def stack(self, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cxr_triage", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def trainer(
        self, command: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        # The lead wires these into `cxr-triage`; until then they run from trainer.cli directly.
        code = f"from trainer.cli import {command}; {command}()"
        return subprocess.run(
            [sys.executable, "-c", code, *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=600,
        )

    def served_versions(self) -> list[str]:
        url = f"{self.env['CXR_TRITON_HTTP_URL']}/v2/models/{MODEL}"
        with urllib.request.urlopen(url, timeout=5) as response:
            versions: list[str] = json.load(response)["versions"]
        return versions

    def wait_served(self, version: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self.served_versions() == [version]:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"Triton did not switch to version {version}; serves {self.served_versions()}")


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """MLflow and Triton started by `cxr-triage up --only mlflow,triton` in a private home on free ports."""
    if not PUBLIC.is_dir():
        pytest.fail(f"the public sample set is missing at {PUBLIC}")
    home = tmp_path_factory.mktemp("trainer-stack")
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update(
        {
            "CXR_HOME": str(home),
            "CXR_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
            "CXR_TRITON_HTTP_URL": f"http://127.0.0.1:{free_port()}",
            "CXR_TRITON_GRPC_URL": f"127.0.0.1:{free_port()}",
            "CXR_TRITON_METRICS_PORT": str(free_port()),
            "CXR_INITIAL_MODEL_INPUT_SIZE": "64",
            "CXR_RAY_TMPDIR": ray_tmp,
            "CXR_EVAL_DATA": str(PUBLIC),
            # A 3-step model may rank worse than chance: the floor is tested in test_gate_sensitivity.
            "CXR_GATE_MIN_AUROC_ABNORMAL": "0",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        }
    )
    started = Services(env)
    try:
        up = started.stack("up", "--detach", "--only", "mlflow,triton", timeout_s=600)
        assert up.returncode == 0, f"{up.stdout}\n{up.stderr}"
        started.wait_served("1")  # the untrained initial model
        yield started
    finally:
        started.stack("down", timeout_s=120)
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def train_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The training command's own TMPDIR, to see what it leaves behind."""
    return tmp_path_factory.mktemp("train-tmp")


@pytest.fixture(scope="module")
def training(services: Services, train_tmp: Path) -> subprocess.CompletedProcess[str]:
    # Tiny and bounded: 64 px, 2 epochs of 3 steps of 4 images on each of 2 workers; INT8 variant included.
    args = (
        "--model densenet121 --input-size 64 --epochs 2 --max-steps 3 --batch-size 4 --workers 2 --int8 --json"
        " --progress"
    )
    result = services.trainer(
        "train", "--data", str(PUBLIC), "--experiment", "test-trainer-lifecycle", *args.split(),
        env={"TMPDIR": str(train_tmp)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def trained(training: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(training.stdout)
    return payload


def test_training_on_ray_workers_shows_an_epoch_bar_and_no_framework_lines(
    training: subprocess.CompletedProcess[str],
) -> None:
    err = training.stderr
    # The driver's bar, from the run's metrics: both epochs, with the loss and the validation AUROC.
    assert "epochs:" in err and "2/2" in err and "val AUROC" in err, err[-3000:]
    # Nothing Ray's workers or controller wrote reaches the terminal at the default log level.
    for line in err.replace("\r", "\n").splitlines():
        assert "TrainingReport" not in line and "core_worker.cc" not in line, line
        assert not line.lstrip().startswith(("(RayTrainWorker", "(TrainController", "\x1b[36m(")), line


def test_training_run_is_tracked_and_registered_as_challenger(
    services: Services, trained: dict[str, Any]
) -> None:
    client = services.client()
    run = client.get_run(trained["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["architecture"] == "densenet121" and run.data.params["world_size"] == "2"
    assert float(run.data.params["trainable_fraction"]) == 1.0
    losses = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in losses] == [1, 2]
    for key in (
        "val_auroc_macro",
        "val_auroc_abnormal",
        "epoch_seconds",
        "images_per_second",
        "peak_memory_mb",
    ):
        assert len(client.get_metric_history(run.info.run_id, key)) == 2, key
    metrics = run.data.metrics
    for key in (
        "sensitivity",
        "specificity",
        "precision",
        "f1",
        "threshold",
        "auroc_macro",
        "auroc_abnormal",
    ):
        assert f"final_val_{key}" in metrics, key
    assert metrics["final_val_sensitivity"] >= 0.95  # threshold chosen for the target on this split
    assert metrics["onnx_parity_max_abs_diff"] <= 1e-4
    assert "int8_auroc_macro_delta" in metrics and "int8_val_sensitivity" in metrics
    assert "int8/model.int8.onnx" in {a.path for a in client.list_artifacts(run.info.run_id, "int8")}
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {"plots/roc_abnormal.png", "plots/roc_labels.png"}
    assert "checkpoint/model.pt" in {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}

    version = client.get_model_version_by_alias(MODEL, "challenger")
    assert version.version == trained["model_version"] and version.run_id == trained["run_id"]
    folder = mlflow.artifacts.download_artifacts(
        artifact_uri=client.get_model_version_download_uri(MODEL, version.version),
        tracking_uri=services.tracking_uri,
    )
    onnx_path = Path(folder) / "model.onnx"
    proto = onnx.load(str(onnx_path), load_external_data=False)
    assert [o.name for o in proto.graph.output] == ["probabilities", "cams"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["cxr.mlflow_run_id"] == trained["run_id"] and float(meta["cxr.threshold"]) > 0


def test_training_leaves_no_exported_files_behind(trained: dict[str, Any], train_tmp: Path) -> None:
    # Plots and ONNX files (fp32 and INT8) are in MLflow; a retrain worker that kept local copies would fill
    # the disk by ~36 MB a run.
    assert not list(train_tmp.glob("cxr-train-*"))


def test_evaluate_prints_the_json_contract_and_predictions(
    services: Services, trained: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "predictions.csv"
    result = services.trainer(
        "evaluate", "--data", str(PUBLIC), "--model", f"models:/{MODEL}@challenger", "--split", "val", "--json",
        "--predictions-out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert set(report) >= REQUIRED_KEYS
    assert report["model_version"] == trained["model_version"]
    assert report["n"] == trained["validation"]["n"]
    assert report["auroc_macro"] == pytest.approx(
        trained["validation"]["auroc_macro"], abs=1e-4
    )  # ONNX = torch
    assert set(report["per_source"]) == {"NIH-ChestXray14", "MHH-COVID19-image-repository"}
    assert sum(s["n"] for s in report["per_source"].values()) == report["n"]
    assert all(0 <= v <= 1 for v in report["auroc_per_label"].values())
    lines = out.read_text().splitlines()
    assert lines[0].split(",") == ["Path", *LABELS, "priority"] and len(lines) == report["n"] + 1
    for line in lines[1:]:
        values = np.array([float(v) for v in line.split(",")[1:]])
        assert values[-1] == pytest.approx(priority(values[:-1]), abs=2e-6)  # the worklist's own formula


def test_promote_and_rollback_switch_the_served_version(services: Services, trained: dict[str, Any]) -> None:
    client = services.client()
    first = trained["model_version"]

    # Gated on the validation split, where this 3-step model's threshold was chosen (for 0.97 sensitivity):
    # this test is about the registry and serving; the default test split is gated in test_gate_sensitivity.
    promoted = services.trainer("promote", "--split", "val", "--json")
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    result = json.loads(promoted.stdout)
    assert result["promoted"] and result["champion_version"] is None
    services.wait_served(result["served_version"])
    assert client.get_model_version_by_alias(MODEL, "champion").version == first
    assert "challenger" not in client.get_registered_model(MODEL).aliases

    # A second registered version of the same model: it ties with the champion, so the gate lets it through.
    source = client.get_model_version(MODEL, first)
    assert source.source and source.source.startswith("models:/")
    model_id = source.source.removeprefix("models:/")  # MLflow 3: the logged model the version points at
    second = client.create_model_version(
        MODEL, source.source, run_id=source.run_id, model_id=model_id
    ).version
    client.set_registered_model_alias(MODEL, "challenger", second)
    promoted = services.trainer("promote", "--split", "val", "--json")
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    result = json.loads(promoted.stdout)
    assert result["promoted"] and result["champion_version"] == first
    assert result["challenger_eval"]["auroc_macro"] == result["champion_eval"]["auroc_macro"]
    # The champion's errors on the split became the regression set; the same model makes the same ones.
    regression_set = result["challenger_eval"]["regression_set"]
    assert (
        regression_set["n"] > 0 and regression_set["challenger_errors"] == regression_set["champion_errors"]
    )
    assert (
        len(json.loads(client.get_registered_model(MODEL).tags["cxr.regression_set"])) == regression_set["n"]
    )
    first_served = client.get_model_version(MODEL, first).tags["cxr.served_version"]
    services.wait_served(result["served_version"])

    rolled = services.trainer("rollback", "--json")
    assert rolled.returncode == 0, rolled.stderr[-3000:]
    assert json.loads(rolled.stdout) == {
        "champion_version": first,
        "replaced_version": second,
        "served_version": first_served,
    }
    services.wait_served(first_served)
    assert client.get_model_version_by_alias(MODEL, "champion").version == first

    # The gate refuses a challenger that misses the sensitivity target: nothing changes.
    client.set_registered_model_alias(MODEL, "challenger", second)
    refused = services.trainer("promote", "--split", "val", "--json", env={"CXR_TARGET_SENSITIVITY": "1.0"})
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert not json.loads(refused.stdout)["promoted"]
    assert client.get_model_version(MODEL, second).tags["cxr.gate"] == "failed"
    assert client.get_model_version_by_alias(MODEL, "champion").version == first
    assert services.served_versions() == [first_served]

    # Rolling back the first champion restores the untrained model served before it, and no champion.
    rolled = services.trainer("rollback", "--json")
    assert rolled.returncode == 0, rolled.stderr[-3000:]
    assert json.loads(rolled.stdout)["champion_version"] is None
    services.wait_served("1")
    assert "champion" not in client.get_registered_model(MODEL).aliases


def test_cross_validation_tracks_the_folds_and_keeps_no_checkpoint(services: Services) -> None:
    # Bounded: ResNet-18 at 32 px, 1 epoch of 2 steps per fold, in-process.
    args = "--recipe resnet18-128 --input-size 32 --epochs 1 --max-steps 2 --cv 2 --no-progress --json"
    result = services.trainer("train", "--data", str(PUBLIC), "--experiment", "test-cv", *args.split())
    assert result.returncode == 0, result.stderr[-4000:]
    payload = json.loads(result.stdout)
    assert payload["recipe"] == "resnet18-128" and payload["cv"] == 2 and len(payload["folds"]) == 2
    assert (
        sum(f["n"] for f in payload["folds"]) == payload["pooled"]["n"] == 534 - 74
    )  # the test split is left out
    for key in ("auroc_abnormal", "auroc_macro", "NIH-ChestXray14/auroc_abnormal", "sensitivity"):
        stats = payload["summary"][key]
        assert stats["folds"] == 2 and stats["sd"] is not None, key
    assert "MHH-COVID19-image-repository/auroc_abnormal" not in payload["summary"]  # all abnormal: undefined

    client = services.client()
    parent = client.get_run(payload["run_id"])
    assert parent.data.params["architecture"] == "resnet18" and parent.data.params["cv_folds"] == "2"
    assert parent.data.metrics["cv_auroc_abnormal_mean"] == pytest.approx(
        payload["summary"]["auroc_abnormal"]["mean"], abs=1e-4
    )
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(c.data.tags["cxr.fold"] for c in children) == ["1", "2"]
    assert all(c.info.status == "FINISHED" and "train_loss" in c.data.metrics for c in children)
    home = Path(services.env["CXR_HOME"])
    assert not list((home / "checkpoints").glob(f"cv-{parent.info.run_id}-*"))
