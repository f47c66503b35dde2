"""ONNX export of a 14-finding classifier: scores, class activation maps and metadata (cxr_triage.model.export)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from cxr_triage.imaging import normalise, preprocess, resize_gray
from cxr_triage.labels import LABELS, NUM_LABELS
from cxr_triage.model.export import (
    CAM_CLASS_ACTIVATION,
    CAM_NONE,
    UNTRAINED,
    GrayscaleInput,
    build_densenet121,
    export_model,
    export_untrained,
    read_metadata,
)

SIZE = 64


class PooledConv(nn.Module):
    """A small logits model without a ``features``/``classifier`` pair (like a ViT: no CAM path)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, NUM_LABELS)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(image))


class MiswiredCnn(nn.Module):
    """Has ``features`` and ``classifier``, but its forward scales the logits: the CAM path would be wrong."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=32, padding=1))
        self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Linear(8, NUM_LABELS))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        pooled = torch.relu(self.features(image)).mean(dim=(2, 3))
        return 2.0 * self.classifier(pooled)


def pixels(seed: int, batch: int, size: int) -> np.ndarray:
    """Greyscale pixels as the worker sends them: uint8 [N, 1, S, S]."""
    return np.random.default_rng(seed).integers(0, 256, (batch, 1, size, size), dtype=np.uint8)


def run(path: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probabilities, cams = session.run(["probabilities", "cams"], {"image": images})
    return probabilities, cams


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    export_untrained(path, input_size=SIZE, seed=7)
    return path


def test_graph_signature(exported: Path) -> None:
    model = onnx.load(str(exported))
    assert model.opset_import[0].version == 17
    (inp,) = model.graph.input
    outputs = {
        o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output
    }
    assert inp.name == "image"
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", 1, SIZE, SIZE]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert outputs == {
        "probabilities": ["batch", NUM_LABELS],
        "cams": ["batch", NUM_LABELS, SIZE // 32, SIZE // 32],
    }


def test_metadata_says_untrained_and_how_maps_are_made(exported: Path) -> None:
    meta = read_metadata(exported)
    assert meta["cxr.weights"] == UNTRAINED == "untrained-random-init"
    assert json.loads(meta["cxr.labels"]) == list(LABELS)
    assert meta["cxr.input_size"] == str(SIZE)
    assert meta["cxr.architecture"] == "densenet121"
    assert meta["cxr.cam"] == CAM_CLASS_ACTIVATION
    assert meta["cxr.created_at"].endswith("+00:00")


@pytest.mark.parametrize("batch", [1, 3])
def test_dynamic_batch_probabilities_match_torch(exported: Path, batch: int) -> None:
    images = pixels(batch, batch, SIZE)
    probabilities, cams = run(exported, images)
    assert probabilities.shape == (batch, len(LABELS)) and cams.shape == (batch, NUM_LABELS, 2, 2)
    assert probabilities.dtype == np.float32 and cams.dtype == np.float32
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    with torch.no_grad():
        expected = build_densenet121(seed=7)(torch.from_numpy(normalise(images))).numpy()
    assert np.abs(probabilities - expected).max() <= 1e-4


def test_maps_are_class_activations_whose_mean_is_the_logit(exported: Path) -> None:
    images = pixels(5, 2, SIZE)
    probabilities, cams = run(exported, images)
    logits = np.log(probabilities / (1 - probabilities))
    assert np.abs(cams.mean(axis=(2, 3)) - logits).max() <= 1e-3
    assert np.ptp(cams, axis=(2, 3)).min() > 0  # real spatial maps, not a constant per finding
    # the map is W . relu(features) + b at each location, computed here from the torch modules
    backbone = build_densenet121(seed=7).backbone
    with torch.no_grad():
        maps = torch.relu(backbone.features(torch.from_numpy(normalise(images))))
        expected = torch.einsum("kc,nchw->nkhw", backbone.classifier.weight, maps)
        expected += backbone.classifier.bias[None, :, None, None]
    assert np.abs(cams - expected.numpy()).max() <= 1e-3


def test_seed_makes_export_reproducible() -> None:
    a = build_densenet121(seed=3).state_dict()
    b = build_densenet121(seed=3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_model_without_a_cam_path_exports_zero_maps(tmp_path: Path) -> None:
    model = PooledConv().train()
    path = export_model(model, tmp_path / "m.onnx", input_size=96, metadata={"cxr.weights": "run-7"})
    assert model.training  # the caller's module is left as it was
    images = pixels(0, 2, 96)
    probabilities, cams = run(path, images)
    with torch.no_grad():
        expected = torch.sigmoid(PooledConv().eval()(torch.from_numpy(normalise(images)))).numpy()
    assert np.abs(probabilities - expected).max() <= 1e-5
    assert cams.shape == (2, NUM_LABELS, 3, 3) and not cams.any()
    meta = read_metadata(path)
    assert meta["cxr.cam"] == CAM_NONE and meta["cxr.weights"] == "run-7"
    assert meta["cxr.architecture"] == "pooledconv"


def test_features_that_do_not_reproduce_the_scores_give_no_maps(tmp_path: Path) -> None:
    path = export_model(MiswiredCnn(), tmp_path / "m.onnx", input_size=64, metadata={})
    images = pixels(1, 2, 64)
    probabilities, cams = run(path, images)
    with torch.no_grad():
        expected = torch.sigmoid(MiswiredCnn().eval()(torch.from_numpy(normalise(images)))).numpy()
    assert np.abs(probabilities - expected).max() <= 1e-5  # the model's own forward, not the CAM path
    assert not cams.any() and read_metadata(path)["cxr.cam"] == CAM_NONE


def test_a_model_that_does_not_return_14_logits_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"logits of shape \[N, 14\]"):
        export_model(
            nn.Sequential(nn.Flatten(), nn.LazyLinear(3)), tmp_path / "m.onnx", input_size=64, metadata={}
        )


def test_the_graph_normalises_pixels_exactly_as_the_trainer_does() -> None:
    gray = np.random.default_rng(2).integers(0, 256, (300, 280), dtype=np.uint8)
    resized = resize_gray(gray, SIZE)
    assert resized.dtype == np.uint8 and resized.shape == (1, SIZE, SIZE)
    with torch.no_grad():
        in_graph = GrayscaleInput()(torch.from_numpy(resized[None])).numpy()[0]
    assert in_graph.shape == (3, SIZE, SIZE)
    assert np.abs(in_graph - preprocess(gray, SIZE)).max() <= 1e-6


def test_the_metadata_states_the_input_the_model_takes(exported: Path) -> None:
    meta = read_metadata(exported)
    assert meta["cxr.input_size"] == str(SIZE) and meta["cxr.input_format"] == "uint8-grey-1xSxS"
