"""INT8 static QDQ quantisation: the calibration reader, the BatchNorm rewrite, and a quantised DenseNet121."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from cxr_triage.imaging import decode_grayscale, resize_gray
from cxr_triage.model.export import INPUT_NAME, OUTPUT_NAME, export_untrained, read_metadata
from cxr_triage.model.quantize import (
    QUANTIZATION,
    ImageCalibrationReader,
    batchnorm_to_depthwise,
    quantize_static_qdq,
)

SIZE = 64


def _probabilities(path: Path, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0])


def test_calibration_reader_feeds_resized_pixels_one_by_one_and_rewinds(
    sample_images: list[Path],
) -> None:
    paths = sample_images[:3]
    reader = ImageCalibrationReader(paths, input_size=SIZE)
    first = reader.get_next()
    assert first is not None and list(first) == [INPUT_NAME]
    assert first[INPUT_NAME].shape == (1, 1, SIZE, SIZE) and first[INPUT_NAME].dtype == np.uint8
    expected = resize_gray(decode_grayscale(paths[0].read_bytes()), SIZE)
    np.testing.assert_array_equal(first[INPUT_NAME][0], expected)
    assert reader.get_next() is not None and reader.get_next() is not None
    assert reader.get_next() is None
    reader.rewind()
    again = reader.get_next()
    assert again is not None
    np.testing.assert_array_equal(again[INPUT_NAME], first[INPUT_NAME])
    assert len(reader) == 3


def test_calibration_reader_needs_images() -> None:
    with pytest.raises(ValueError):
        ImageCalibrationReader([], input_size=SIZE)


class _ConcatBn(nn.Module):
    """A DenseNet-like block: BatchNorm on a Concat, where it cannot be folded into a Conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(7)
        self.head = nn.Conv2d(7, 2, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(torch.cat([image, self.conv(image)], dim=1))))


def test_batchnorm_becomes_an_equivalent_depthwise_conv(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _ConcatBn().eval()
    with torch.no_grad():  # non-trivial statistics, so the rewrite has something to get wrong
        mean, var = model.norm.running_mean, model.norm.running_var
        assert mean is not None and var is not None
        mean.uniform_(-1, 1)
        var.uniform_(0.5, 2)
        model.norm.weight.uniform_(0.5, 1.5)
        model.norm.bias.uniform_(-0.5, 0.5)
    path = tmp_path / "bn.onnx"
    example = torch.randn(2, 3, 16, 16)
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        output_names=["y"],
        do_constant_folding=True,
    )
    proto = onnx.load(str(path))
    assert any(node.op_type == "BatchNormalization" for node in proto.graph.node)
    assert batchnorm_to_depthwise(proto) == 1
    assert not any(node.op_type == "BatchNormalization" for node in proto.graph.node)
    onnx.checker.check_model(proto)
    rewritten = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(example).numpy()
    np.testing.assert_allclose(rewritten.run(None, {"x": example.numpy()})[0], expected, atol=1e-5)


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fp32") / "model.onnx"
    export_untrained(path, input_size=SIZE, seed=7)
    return path


def test_static_qdq_int8_model_is_quantised_and_close_to_fp32(
    fp32_model: Path, sample_images: list[Path], tmp_path: Path
) -> None:
    int8_path = tmp_path / "int8.onnx"
    result = quantize_static_qdq(fp32_model, int8_path, sample_images[:8], SIZE)

    assert result.path == int8_path and result.calibration_images == 8
    assert result.batchnorms_rewritten > 0  # DenseNet normalises every Concat
    ops = [node.op_type for node in onnx.load(str(int8_path)).graph.node]
    assert ops.count("QuantizeLinear") > 50 and ops.count("DequantizeLinear") > 50
    assert "BatchNormalization" not in ops
    metadata = read_metadata(int8_path)
    assert metadata["cxr.quantization"] == QUANTIZATION
    assert metadata["cxr.weights"] == read_metadata(fp32_model)["cxr.weights"]

    held_out = np.stack(
        [resize_gray(decode_grayscale(path.read_bytes()), SIZE) for path in sample_images[8:16]]
    )
    fp32, int8 = _probabilities(fp32_model, held_out), _probabilities(int8_path, held_out)
    assert int8.shape == fp32.shape
    assert float(np.abs(fp32 - int8).max()) < 0.05
