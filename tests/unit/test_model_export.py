"""ONNX export of the DenseNet121 classifier and the Triton model repository it is installed in."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from cxr_triage.labels import LABELS
from cxr_triage.settings import Settings
from inference_worker.export import UNTRAINED, build_densenet121, export_untrained, read_metadata
from inference_worker.model_repo import ensure_initial_model, ensure_model, list_versions

SIZE = 64


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    export_untrained(path, input_size=SIZE, seed=7)
    return path


@pytest.fixture(scope="module")
def session(exported: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])


def test_graph_signature(exported: Path) -> None:
    model = onnx.load(str(exported))
    assert model.opset_import[0].version == 17
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == "image" and out.name == "probabilities"
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, SIZE, SIZE]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_metadata_says_untrained(exported: Path) -> None:
    meta = read_metadata(exported)
    assert meta["cxr.weights"] == UNTRAINED == "untrained-random-init"
    assert json.loads(meta["cxr.labels"]) == list(LABELS)
    assert meta["cxr.input_size"] == str(SIZE)
    assert meta["cxr.architecture"] == "densenet121"
    assert meta["cxr.created_at"].endswith("+00:00")


@pytest.mark.parametrize("batch", [1, 3])
def test_dynamic_batch_probabilities_match_torch(session: ort.InferenceSession, batch: int) -> None:
    images = np.random.default_rng(batch).standard_normal((batch, 3, SIZE, SIZE)).astype(np.float32)
    (probabilities,) = session.run(["probabilities"], {"image": images})
    assert probabilities.shape == (batch, len(LABELS))
    assert probabilities.dtype == np.float32
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    with torch.no_grad():
        expected = build_densenet121(seed=7)(torch.from_numpy(images)).numpy()
    assert np.abs(probabilities - expected).max() <= 1e-4


def test_seed_makes_export_reproducible() -> None:
    a = build_densenet121(seed=3).state_dict()
    b = build_densenet121(seed=3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ensure_model_creates_version_1_once(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", model_input_size=SIZE, model_name="cxr_test")
    first = ensure_model(settings)
    model_dir = tmp_path / "home" / "model_repository" / "cxr_test"
    assert first.created and first.version == 1 and first.weights == UNTRAINED
    assert first.path == model_dir / "1" / "model.onnx"
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == ["__pycache__", "model.onnx", "model.py"]
    assert list((model_dir / "1" / "__pycache__").glob("model.cpython-*.pyc"))
    mtime = first.path.stat().st_mtime_ns

    second = ensure_model(settings)
    assert not second.created and second.version == 1 and second.path == first.path
    assert first.path.stat().st_mtime_ns == mtime
    assert ensure_initial_model(settings) == 1
    assert list_versions(model_dir) == [1]
    # nothing staged is left behind, in or beside the repository
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == ["model_repository"]
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "config.onnxruntime.pbtxt", "config.pbtxt"]
    assert oct((model_dir / "1").stat().st_mode & 0o777) == oct(0o755)


def test_configs_describe_the_same_model(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, model_input_size=SIZE, model_name="cxr_test")
    model_dir = settings.model_repository / "cxr_test"
    from inference_worker.model_repo import write_configs

    write_configs(model_dir, model_name="cxr_test", input_size=SIZE)
    python = (model_dir / "config.pbtxt").read_text()
    onnxrt = (model_dir / "config.onnxruntime.pbtxt").read_text()
    assert 'backend: "python"' in python and "KIND_CPU" in python
    assert 'key: "intra_op_thread_count"' in python and 'string_value: "2"' in python
    assert 'platform: "onnxruntime_onnx"' in onnxrt and "backend" not in onnxrt
    for text in (python, onnxrt):
        assert 'name: "cxr_test"' in text
        assert "max_batch_size: 32" in text
        assert f"dims: [ 3, {SIZE}, {SIZE} ]" in text and "dims: [ 14 ]" in text
        assert "max_queue_delay_microseconds: 2000" in text
        assert "latest: { num_versions: 1 }" in text
    before = os.stat(model_dir / "config.pbtxt").st_mtime_ns
    write_configs(model_dir, model_name="cxr_test", input_size=SIZE)
    assert os.stat(model_dir / "config.pbtxt").st_mtime_ns == before  # unchanged config: no Triton reload


def test_cli_model_init_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from cxr_triage.cli import main

    monkeypatch.setenv("CXR_HOME", str(tmp_path))
    monkeypatch.setenv("CXR_MODEL_INPUT_SIZE", str(SIZE))
    runner = CliRunner()
    first = runner.invoke(main, ["model", "init", "--json"])
    assert first.exit_code == 0, first.output
    result = json.loads(first.stdout.strip().splitlines()[-1])
    assert result == {
        "model_name": "cxr_classifier",
        "version": 1,
        "created": True,
        "path": str(tmp_path.resolve() / "model_repository" / "cxr_classifier" / "1" / "model.onnx"),
        "weights": UNTRAINED,
    }
    again = runner.invoke(main, ["model", "init"])
    assert again.exit_code == 0
    assert "kept existing cxr_classifier version 1 (untrained-random-init)" in again.stdout
