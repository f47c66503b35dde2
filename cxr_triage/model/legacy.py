"""Models exported before a model carried its own contract: ``image`` float32 [N, 3, S, S], normalised outside.

Such a file (from an earlier cxr-triage, or another tool that follows the old convention) still holds a good
network; only its input differs. ``upgrade_float_input`` writes a copy that takes the uint8 [N, 1, S, S] pixels
the workers send: a small graph doing exactly what ``cxr_triage.model.export.GrayscaleInput`` does is merged in
front of it (``onnx.compose``), and the network's own nodes and weights are left as they were.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, compose, helper, numpy_helper

from cxr_triage.imaging import IMAGENET_MEAN, IMAGENET_STD
from cxr_triage.model.contract import INPUT_FORMAT, INPUT_FORMAT_KEY, INPUT_SIZE_KEY
from cxr_triage.model.export import INPUT_NAME

logger = logging.getLogger(__name__)

_PREFIX: Final = "cxr_pixels_"
_NORMALISED: Final = "normalised"
UPGRADED_KEY: Final = "cxr.upgraded_from"


def _input(model: onnx.ModelProto) -> onnx.ValueInfoProto | None:
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    return inputs[0] if len(inputs) == 1 and inputs[0].name == INPUT_NAME else None


def takes_float_input(path: Path) -> bool:
    """Whether ``path`` is a model of the old convention (``image`` float32 [N, 3, S, S])."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (OSError, DecodeError, ValueError):
        return False  # not a model at all: read_signature says why
    value = _input(model)
    if value is None or value.type.tensor_type.elem_type != TensorProto.FLOAT:
        return False
    dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
    return len(dims) == 4 and dims[1] == 3 and dims[2] == dims[3] > 0


def _pixels_graph(size: int, opset: int) -> onnx.ModelProto:
    """uint8 [N, 1, S, S] -> float [N, 3, S, S], ImageNet-normalised (``cxr_triage.imaging.normalise``)."""
    constants = {
        "scale": np.array(255.0, dtype=np.float32),
        "mean": IMAGENET_MEAN.reshape(1, 3, 1, 1).astype(np.float32),
        "std": IMAGENET_STD.reshape(1, 3, 1, 1).astype(np.float32),
    }
    nodes = [
        helper.make_node("Cast", [INPUT_NAME], ["grey"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["grey", "scale"], ["unit"]),
        helper.make_node("Concat", ["unit", "unit", "unit"], ["rgb"], axis=1),
        helper.make_node("Sub", ["rgb", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], [_NORMALISED]),
    ]
    graph = helper.make_graph(
        nodes,
        "cxr_pixels",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["batch", 1, size, size])],
        [helper.make_tensor_value_info(_NORMALISED, TensorProto.FLOAT, ["batch", 3, size, size])],
        initializer=[numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def upgrade_float_input(source: Path, target: Path) -> Path:
    """Write ``source`` (old convention) to ``target`` taking uint8 pixels; external data is inlined."""
    model = onnx.load(str(source))
    value = _input(model)
    if value is None:
        raise ValueError(f"{source.name} has no single {INPUT_NAME!r} input")
    size = value.type.tensor_type.shape.dim[3].dim_value
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    pixels = _pixels_graph(size, opset)
    pixels.ir_version = model.ir_version
    pixels = compose.add_prefix(pixels, _PREFIX)
    merged = compose.merge_models(
        pixels, model, io_map=[(_PREFIX + _NORMALISED, INPUT_NAME)], producer_name=model.producer_name
    )
    merged.graph.input[0].name = INPUT_NAME
    for node in merged.graph.node:
        node.input[:] = [INPUT_NAME if name == _PREFIX + INPUT_NAME else name for name in node.input]
    props = {p.key: p.value for p in model.metadata_props}
    props |= {INPUT_SIZE_KEY: str(size), INPUT_FORMAT_KEY: INPUT_FORMAT, UPGRADED_KEY: "float-3xSxS"}
    onnx.helper.set_model_props(merged, props)
    onnx.checker.check_model(merged)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(merged, str(target))
    logger.info("float-input model upgraded to take uint8 pixels", extra={"input_size": size})
    return target
