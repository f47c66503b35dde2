"""Models of the old convention (float [N, 3, S, S] input) are upgraded to take pixels, never refused outright."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from cxr_triage.imaging import normalise
from cxr_triage.model.export import build_densenet121, export_graph, read_metadata
from cxr_triage.model.legacy import takes_float_input, upgrade_float_input
from cxr_triage.model.repository import (
    CONFIG_FILE,
    ONNX_FILE,
    add_version,
    ensure_model,
    model_dir,
    publish_version,
    serving_version,
    staging_dir,
    version_metadata,
)
from cxr_triage.model.signature import read_signature
from cxr_triage.settings import Settings

SIZE = 64


def legacy_model(path: Path, *, seed: int = 3) -> Path:
    """A model as cxr-triage exported it before: ``image`` float [N, 3, S, S], ImageNet-normalised outside."""
    graph, _ = export_graph(build_densenet121(seed=seed), input_size=SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            graph,
            (torch.zeros(1, 3, SIZE, SIZE),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["probabilities", "cams"],
            dynamic_axes={name: {0: "batch"} for name in ("image", "probabilities", "cams")},
        )
    return path


def outputs(path: Path, feed: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": feed})


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return legacy_model(tmp_path_factory.mktemp("legacy") / "old.onnx")


def test_the_upgraded_copy_takes_pixels_and_computes_the_same(legacy: Path, tmp_path: Path) -> None:
    assert takes_float_input(legacy)
    upgraded = upgrade_float_input(legacy, tmp_path / "new.onnx")
    assert not takes_float_input(upgraded)
    assert read_signature(upgraded).input_size == SIZE
    pixels = np.random.default_rng(0).integers(0, 256, (3, 1, SIZE, SIZE), dtype=np.uint8)
    for before, after in zip(outputs(legacy, normalise(pixels)), outputs(upgraded, pixels), strict=True):
        assert np.abs(before - after).max() <= 1e-5
    meta = read_metadata(upgraded)
    assert meta["cxr.input_size"] == str(SIZE) and meta["cxr.upgraded_from"] == "float-3xSxS"


def test_adding_a_legacy_model_adds_the_upgraded_copy(legacy: Path, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", model_name="cxr_test")
    version = add_version(settings, legacy, metadata={"source": "test"})
    assert version == 1 and not takes_float_input(model_dir(settings) / "1" / ONNX_FILE)
    assert version_metadata(settings, 1)["upgraded_from"] == "float-input"


def test_a_repository_served_by_a_legacy_model_is_upgraded_on_start(legacy: Path, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", model_name="cxr_test")
    staged = staging_dir(settings.model_repository)
    (staged / ONNX_FILE).write_bytes(legacy.read_bytes())  # as an earlier cxr-triage left it, served
    publish_version(staged, model_dir(settings), 1)
    (model_dir(settings) / "SERVING").write_text("1\n")
    served = ensure_model(settings)
    assert (served.version, serving_version(settings)) == (2, 2)
    assert version_metadata(settings, 2)["upgraded_from_version"] == "1"
    assert "dims: [ 1, 64, 64 ]" in (model_dir(settings) / CONFIG_FILE).read_text()
    assert takes_float_input(model_dir(settings) / "1" / ONNX_FILE)  # version 1 itself is left as written
    assert ensure_model(settings).version == 2  # a second start finds the upgraded copy served


def test_the_trainer_scores_a_registered_legacy_model_as_it_would_be_served(
    legacy: Path, tmp_path: Path
) -> None:
    from trainer.evaluate import scored_model

    copy = tmp_path / "model.onnx"
    copy.write_bytes(legacy.read_bytes())
    scored = scored_model(copy, uri="models:/cxr_classifier/1", model_version="1")
    assert scored.input_size == SIZE and not takes_float_input(scored.onnx_path)
