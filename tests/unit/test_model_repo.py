"""The Triton model repository: versions, the served version, and the two configs (cxr_triage.model.repository)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from cxr_triage.labels import NUM_LABELS
from cxr_triage.model.export import UNTRAINED, export_model
from cxr_triage.model.repository import (
    CONFIG_FILE,
    NAMED_CONFIG,
    ONNXRUNTIME_CONFIG_FILE,
    SERVING_FILE,
    VersionNotFound,
    add_version,
    ensure_initial_model,
    ensure_model,
    list_versions,
    model_dir,
    serve_version,
    serving_version,
    version_metadata,
)
from cxr_triage.model.serving import ServingSettings
from cxr_triage.model.signature import ModelRejected, read_signature
from cxr_triage.settings import Settings

SIZE = 64


class SmallCnn(nn.Module):
    """DenseNet-shaped (features -> ReLU -> pool -> Linear) but tiny, so exports take milliseconds."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=32, padding=1))
        self.classifier = nn.Linear(8, NUM_LABELS)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.relu(self.features(image)).mean(dim=(2, 3)))


def small_model(folder: Path, *, size: int = SIZE, seed: int = 0) -> Path:
    return export_model(SmallCnn(seed), folder / f"small-{size}-{seed}.onnx", input_size=size, metadata={})


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", model_name="cxr_test")


def test_ensure_model_creates_and_serves_version_1_once(settings: Settings) -> None:
    first = ensure_model(settings)
    folder = model_dir(settings)
    assert first.created and first.version == 1 and first.weights == UNTRAINED
    assert first.path == folder / "1" / "model.onnx"
    assert sorted(p.name for p in (folder / "1").iterdir()) == ["__pycache__", "model.onnx", "model.py"]
    assert list((folder / "1" / "__pycache__").glob("model.cpython-*.pyc"))
    assert serving_version(settings) == 1 and (folder / SERVING_FILE).read_text() == "1\n"
    assert "version_policy: { specific: { versions: [ 1 ] } }" in (folder / CONFIG_FILE).read_text()
    mtime = first.path.stat().st_mtime_ns

    second = ensure_model(settings)
    assert not second.created and second.version == 1 and second.path == first.path
    assert first.path.stat().st_mtime_ns == mtime
    assert ensure_initial_model(settings) == 1
    assert list_versions(settings) == [1]
    # nothing staged is left behind, in or beside the repository
    assert sorted(p.name for p in settings.home.iterdir()) == ["model_repository"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "1",
        SERVING_FILE,
        "config.onnxruntime.pbtxt",
        "config.pbtxt",
    ]
    assert oct((folder / "1").stat().st_mode & 0o777) == oct(0o755)


def test_add_version_copies_the_model_in_without_serving_it(settings: Settings, tmp_path: Path) -> None:
    serve_first = small_model(tmp_path, seed=1)
    assert add_version(settings, serve_first, metadata={}) == 1
    serve_version(settings, 1)
    config_before = (model_dir(settings) / CONFIG_FILE).read_text()

    source = small_model(tmp_path, seed=2)
    version = add_version(settings, source, metadata={"mlflow_run_id": "abc123", "alias": "champion"})
    assert version == 2 and list_versions(settings) == [1, 2]
    assert serving_version(settings) == 1  # adding never switches
    assert (model_dir(settings) / CONFIG_FILE).read_text() == config_before
    copied = model_dir(settings) / "2"
    assert (copied / "model.onnx").read_bytes() == source.read_bytes()
    assert sorted(p.name for p in copied.iterdir()) == [
        "__pycache__",
        "metadata.json",
        "model.onnx",
        "model.py",
    ]
    meta = version_metadata(settings, 2)
    assert meta["mlflow_run_id"] == "abc123" and meta["alias"] == "champion"
    assert meta["source_file"] == source.name and meta["added_at"].endswith("+00:00")
    assert sorted(p.name for p in settings.home.iterdir()) == ["model_repository"]  # no staging left
    (model_dir(settings) / "5").mkdir()  # a half-removed or foreign folder: its number is not reused
    assert add_version(settings, source, metadata={}) == 6 and list_versions(settings) == [1, 2, 6]


def test_serve_version_rewrites_both_configs_and_the_pointer(settings: Settings, tmp_path: Path) -> None:
    for seed in (1, 2):
        add_version(settings, small_model(tmp_path, seed=seed), metadata={})
    folder = model_dir(settings)
    (folder / NAMED_CONFIG).parent.mkdir()  # as compose.yaml's Triton container leaves it
    serve_version(settings, 1)
    serve_version(settings, 2)
    assert serving_version(settings) == 2
    for name in (CONFIG_FILE, ONNXRUNTIME_CONFIG_FILE, str(NAMED_CONFIG)):
        assert "version_policy: { specific: { versions: [ 2 ] } }" in (folder / name).read_text()
    with pytest.raises(VersionNotFound):
        serve_version(settings, 7)
    assert serving_version(settings) == 2


def test_ensure_model_completes_an_interrupted_switch(settings: Settings, tmp_path: Path) -> None:
    for seed in (1, 2):
        add_version(settings, small_model(tmp_path, seed=seed), metadata={})
    serve_version(settings, 1)
    (model_dir(settings) / SERVING_FILE).write_text("2\n")  # crashed after the pointer, before the configs
    assert ensure_model(settings).version == 2
    assert "versions: [ 2 ]" in (model_dir(settings) / CONFIG_FILE).read_text()


def test_a_repository_from_before_the_pointer_serves_its_newest_version(
    settings: Settings, tmp_path: Path
) -> None:
    for seed in (1, 2):
        add_version(settings, small_model(tmp_path, seed=seed), metadata={})
    assert serving_version(settings) is None
    assert ensure_model(settings).version == 2 and serving_version(settings) == 2


def test_external_data_is_copied_with_the_model(settings: Settings, tmp_path: Path) -> None:
    inline = small_model(tmp_path, seed=3)
    split = tmp_path / "split" / "exported.onnx"
    split.parent.mkdir()
    onnx.save_model(
        onnx.load(str(inline)),
        str(split),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="exported.onnx.data",
        size_threshold=0,
    )
    assert read_signature(split).external_data == ("exported.onnx.data",)
    version = add_version(settings, split, metadata={})
    target = model_dir(settings) / str(version)
    assert (target / "exported.onnx.data").is_file()
    images = np.zeros((1, 1, SIZE, SIZE), dtype=np.uint8)
    expected = ort.InferenceSession(str(inline), providers=["CPUExecutionProvider"]).run(
        None, {"image": images}
    )
    served = ort.InferenceSession(str(target / "model.onnx"), providers=["CPUExecutionProvider"])
    assert all(
        np.array_equal(a, b) for a, b in zip(served.run(None, {"image": images}), expected, strict=True)
    )


def test_models_that_do_not_fit_are_rejected(settings: Settings, tmp_path: Path) -> None:
    float_input = onnx.load(str(small_model(tmp_path)))
    float_input.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT  # the pre-contract format
    old_format = tmp_path / "float-input.onnx"
    onnx.save(float_input, str(old_format))
    with pytest.raises(ModelRejected, match="must be uint8 greyscale pixels"):
        add_version(settings, old_format, metadata={})
    bad_threshold = onnx.load(str(small_model(tmp_path)))
    onnx.helper.set_model_props(bad_threshold, {"cxr.input_size": str(SIZE), "cxr.tier.critical": "high"})
    unreadable = tmp_path / "bad-threshold.onnx"
    onnx.save(bad_threshold, str(unreadable))
    with pytest.raises(ModelRejected, match=r"cxr\.tier\.critical = 'high' is not a number"):
        add_version(settings, unreadable, metadata={})
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ModelRejected, match="not a readable ONNX model"):
        add_version(settings, garbage, metadata={})
    renamed = onnx.load(str(small_model(tmp_path)))
    renamed.graph.output[0].name = "scores"
    renamed.graph.node[-1].output[0] = "scores"
    wrong = tmp_path / "wrong.onnx"
    onnx.save(renamed, str(wrong))
    with pytest.raises(ModelRejected, match="return 'probabilities'"):
        add_version(settings, wrong, metadata={})
    without_maps = onnx.load(str(small_model(tmp_path)))
    without_maps.graph.output.pop()  # drop 'cams'
    legacy = tmp_path / "legacy.onnx"
    onnx.save(without_maps, str(legacy))
    with pytest.raises(ModelRejected, match="no 'cams' output"):
        add_version(settings, legacy, metadata={})
    assert list_versions(settings) == []


def test_configs_describe_the_same_model(settings: Settings, tmp_path: Path) -> None:
    add_version(settings, small_model(tmp_path), metadata={})
    serving = ServingSettings(
        instance_count=2,
        intra_op_threads=1,
        inter_op_threads=1,
        preferred_batch_sizes=(4, 8),
        max_queue_delay_us=5000,
        max_batch_size=16,
    )
    serve_version(settings, 1, serving=serving)
    folder = model_dir(settings)
    python = (folder / CONFIG_FILE).read_text()
    onnxrt = (folder / ONNXRUNTIME_CONFIG_FILE).read_text()
    assert 'backend: "python"' in python and "kind: KIND_CPU\n    count: 2" in python
    assert 'key: "allow_spinning"\n  value: { string_value: "0" }' in python
    assert 'platform: "onnxruntime_onnx"' in onnxrt and "backend" not in onnxrt
    assert "kind: KIND_AUTO\n    count: 2" in onnxrt
    for text in (python, onnxrt):
        assert 'name: "cxr_test"' in text
        assert "max_batch_size: 16" in text
        assert f"dims: [ 1, {SIZE}, {SIZE} ]" in text and "dims: [ 14 ]" in text
        assert "data_type: TYPE_UINT8" in text
        assert 'key: "cxr.input_size"\n  value: { string_value: "64" }' in text
        assert 'key: "cxr.version"\n  value: { string_value: "1" }' in text
        assert 'name: "cams"' in text and "dims: [ 14, 2, 2 ]" in text
        assert "preferred_batch_size: [ 4, 8 ]" in text
        assert "max_queue_delay_microseconds: 5000" in text
        assert 'key: "intra_op_thread_count"\n  value: { string_value: "1" }' in text
        assert 'key: "inter_op_thread_count"\n  value: { string_value: "1" }' in text
    before = os.stat(folder / CONFIG_FILE).st_mtime_ns
    serve_version(settings, 1, serving=serving)
    assert os.stat(folder / CONFIG_FILE).st_mtime_ns == before  # unchanged config: no Triton reload


def test_serving_settings_come_from_the_environment(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CXR_TRITON_INSTANCE_COUNT", "3")
    monkeypatch.setenv("CXR_TRITON_PREFERRED_BATCH_SIZES", "[2, 4]")
    add_version(settings, small_model(tmp_path), metadata={})
    serve_version(settings, 1)
    text = (model_dir(settings) / CONFIG_FILE).read_text()
    assert "count: 3" in text and "preferred_batch_size: [ 2, 4 ]" in text
    monkeypatch.setenv("CXR_TRITON_PREFERRED_BATCH_SIZES", "[64]")
    with pytest.raises(ValueError, match="CXR_TRITON_MAX_BATCH_SIZE"):
        ServingSettings()


def test_cli_model_init_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from cxr_triage.cli import main

    monkeypatch.setenv("CXR_HOME", str(tmp_path))
    runner = CliRunner()
    first = runner.invoke(main, ["model", "init", "--json", "--input-size", str(SIZE)])
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


def test_cli_adds_lists_and_serves_versions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from cxr_triage.cli import main

    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    first, second = small_model(tmp_path, seed=1), small_model(tmp_path, seed=2)
    assert runner.invoke(main, ["model", "add", "--serve", str(first)]).stdout.strip() == (
        "added cxr_classifier version 1 (serving)"
    )
    assert (
        runner.invoke(main, ["model", "add", str(second)]).stdout.strip() == "added cxr_classifier version 2"
    )
    listed = json.loads(runner.invoke(main, ["model", "list", "--json"]).stdout)
    assert listed["serving"] == 1
    assert [(row["version"], row["serving"], row["added_by"]) for row in listed["versions"]] == [
        (1, True, "cxr-triage model add"),
        (2, False, "cxr-triage model add"),
    ]
    assert runner.invoke(main, ["model", "serve", "2"]).stdout.strip() == "serving cxr_classifier version 2"
    assert runner.invoke(main, ["model", "list"]).stdout.splitlines() == ["  1", "* 2"]
    missing = runner.invoke(main, ["model", "serve", "9"])
    assert missing.exit_code == 1 and "has no version 9" in missing.output
    other_size = small_model(tmp_path, size=96)  # a version may take another input size than the served one
    added = runner.invoke(main, ["model", "add", "--serve", str(other_size)])
    assert added.stdout.strip() == "added cxr_classifier version 3 (serving)"
    config = (tmp_path / "home" / "model_repository" / "cxr_classifier" / CONFIG_FILE).read_text()
    assert "dims: [ 1, 96, 96 ]" in config and 'value: { string_value: "96" }' in config


def test_the_served_versions_thresholds_reach_the_triton_config(settings: Settings, tmp_path: Path) -> None:
    plain = small_model(tmp_path, seed=1)
    with_tiers = tmp_path / "tiers.onnx"
    export_model(
        SmallCnn(2),
        with_tiers,
        input_size=SIZE,
        metadata={"cxr.threshold": "0.31", "cxr.tier.urgent": "0.31", "cxr.tier.critical": "0.82"},
    )
    add_version(settings, plain, metadata={})
    add_version(settings, with_tiers, metadata={})
    serve_version(settings, 2)
    text = (model_dir(settings) / CONFIG_FILE).read_text()
    assert 'key: "cxr.tier.critical"\n  value: { string_value: "0.82" }' in text
    assert 'key: "cxr.tier.urgent"\n  value: { string_value: "0.31" }' in text
    assert 'key: "cxr.threshold"\n  value: { string_value: "0.31" }' in text
    serve_version(settings, 1)  # a rollback takes the thresholds away with the version
    text = (model_dir(settings) / CONFIG_FILE).read_text()
    assert "cxr.tier" not in text and 'key: "cxr.version"\n  value: { string_value: "1" }' in text
