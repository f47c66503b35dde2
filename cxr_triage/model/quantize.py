"""INT8 variant of the classifier: ONNX Runtime static quantisation (QDQ format) calibrated on real images.

Three steps, each there for a measured reason (``docs/bench/inference.md``):

1. ``quant_pre_process`` (shape inference + graph optimisation): folds each BatchNormalization that follows
   a Conv into that Conv, so fewer float islands are left for the quantiser.
2. Every BatchNormalization still left becomes a depthwise 1x1 Conv (the same arithmetic). DenseNet applies
   BN to the output of each Concat (``norm1`` of every dense layer, the transitions and ``norm5``): 62 such
   nodes that ONNX Runtime cannot run in INT8. Left as BN, each one dequantises, runs in float and
   requantises, with NCHW/NHWC Transposes around it; on the 2-core dev CPU those islands ate the whole INT8
   gain. As a depthwise Conv they become QLinearConv and the graph stays INT8 end to end.
3. ``quantize_static`` in QDQ format, per-channel INT8 weights and UINT8 activations (the U8S8 path that x86
   VNNI kernels are built for; signed activations were slower here), MinMax calibration on real radiographs
   resized exactly as the worker does (``cxr_triage.imaging``).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from cxr_triage.imaging import decode_grayscale, resize_gray
from cxr_triage.model.export import INPUT_NAME

logger = logging.getLogger(__name__)

QUANTIZATION: Final = "static-qdq-int8-per-channel-u8s8"
DEFAULT_CALIBRATION_IMAGES: Final = 64


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds the calibrator one preprocessed radiograph at a time (decoded lazily, as the worker would)."""

    def __init__(self, paths: Sequence[Path], *, input_size: int, input_name: str = INPUT_NAME) -> None:
        if not paths:
            raise ValueError("calibration needs at least one image")
        self.paths = list(paths)
        self.input_size = input_size
        self.input_name = input_name
        self._next = 0

    def __len__(self) -> int:
        return len(self.paths)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.paths):
            return None
        path = self.paths[self._next]
        self._next += 1
        tensor = resize_gray(decode_grayscale(path.read_bytes()), self.input_size)
        return {self.input_name: tensor[np.newaxis]}

    def rewind(self) -> None:
        self._next = 0


@dataclass(frozen=True)
class QuantizeResult:
    path: Path
    calibration_images: int
    batchnorms_rewritten: int
    seconds: float


def batchnorm_to_depthwise(model: onnx.ModelProto) -> int:
    """Replace each BatchNormalization (inference form, constant statistics) by a depthwise 1x1 Conv."""
    initializers = {init.name: init for init in model.graph.initializer}
    rewritten = 0
    for node in model.graph.node:
        if node.op_type != "BatchNormalization" or len(node.output) != 1:
            continue
        x, *stats = node.input
        if len(stats) != 4 or any(name not in initializers for name in stats):
            continue
        scale, bias, mean, var = (numpy_helper.to_array(initializers[name]) for name in stats)
        epsilon = next((attr.f for attr in node.attribute if attr.name == "epsilon"), 1e-5)
        gain = (scale / np.sqrt(var + epsilon)).astype(np.float32)
        shift = (bias - mean * gain).astype(np.float32)
        channels = int(gain.shape[0])
        weight_name, bias_name = (
            f"{node.name or node.output[0]}_dw_weight",
            f"{node.name or node.output[0]}_dw_bias",
        )
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(gain.reshape(channels, 1, 1, 1), weight_name),
                numpy_helper.from_array(shift, bias_name),
            ]
        )
        node.CopyFrom(
            helper.make_node(
                "Conv",
                [x, weight_name, bias_name],
                list(node.output),
                name=f"{node.name}_depthwise",
                group=channels,
                kernel_shape=[1, 1],
            )
        )
        rewritten += 1
    return rewritten


def quantize_static_qdq(
    fp32_path: Path,
    int8_path: Path,
    calibration_images: Sequence[Path],
    input_size: int,
    *,
    pre_process: bool = True,
    rewrite_batchnorm: bool = True,
    calibrate_method: CalibrationMethod = CalibrationMethod.MinMax,
) -> QuantizeResult:
    """Write a static QDQ INT8 copy of ``fp32_path`` to ``int8_path``, calibrated on ``calibration_images``.

    ``rewrite_batchnorm=False`` leaves the BatchNorms in float: only for measuring what the rewrite buys.
    """
    started = time.perf_counter()
    reader = ImageCalibrationReader(calibration_images, input_size=input_size)
    with tempfile.TemporaryDirectory(prefix="cxr-quantize-") as scratch, _quiet_quantizer():
        source = fp32_path
        if pre_process:
            source = Path(scratch) / "pre.onnx"
            quant_pre_process(str(fp32_path), str(source))
        model = onnx.load(str(source))
        rewritten = batchnorm_to_depthwise(model) if rewrite_batchnorm else 0
        prepared = Path(scratch) / "prepared.onnx"
        onnx.save(model, str(prepared))
        _quantize(prepared, int8_path, reader, calibrate_method)
    _copy_metadata(fp32_path, int8_path, calibration_images=len(reader))
    seconds = time.perf_counter() - started
    logger.info(
        "quantised model",
        extra={"calibration_images": len(reader), "batchnorms_rewritten": rewritten, "seconds": seconds},
    )
    return QuantizeResult(int8_path, len(reader), rewritten, seconds)


def _quantize(
    prepared: Path, int8_path: Path, reader: CalibrationDataReader, calibrate_method: CalibrationMethod
) -> None:
    quantize_static(
        str(prepared),
        str(int8_path),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=calibrate_method,
    )


class _FromQuantizer(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "onnxruntime/quantization" not in record.pathname.replace("\\", "/")


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    # The quantiser warns on the root logger for every tensor it handles in a default way (hundreds of lines
    # per DenseNet); its result is checked by the caller, so those lines are dropped while it runs.
    root, quiet = logging.getLogger(), _FromQuantizer()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def _copy_metadata(fp32_path: Path, int8_path: Path, *, calibration_images: int) -> None:
    # The cxr.* properties (labels, input size, weights) must travel with the INT8 file that may be served.
    source = onnx.load(str(fp32_path), load_external_data=False)
    target = onnx.load(str(int8_path))
    props = {prop.key: prop.value for prop in source.metadata_props}
    props.update({"cxr.quantization": QUANTIZATION, "cxr.calibration_images": str(calibration_images)})
    onnx.helper.set_model_props(target, props)
    onnx.save(target, str(int8_path))
