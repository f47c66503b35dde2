"""What an ONNX file must look like to be served: its inputs and outputs, checked without running it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import onnx
from google.protobuf.message import DecodeError
from onnx.external_data_helper import uses_external_data

from cxr_triage.labels import NUM_LABELS
from cxr_triage.model.export import CAM_OUTPUT_NAME, CAM_STRIDE, INPUT_NAME, OUTPUT_NAME


class ModelRejected(ValueError):
    """The file is not a model the workers can use; the message says what is wrong."""


@dataclass(frozen=True)
class ModelSignature:
    input_size: int
    cam_size: tuple[int, int] | None  # (h, w) of the ``cams`` output; None for a model exported without maps
    external_data: tuple[str, ...] = ()  # files the graph's tensors live in, relative to the ONNX file

    @property
    def cam_dims(self) -> tuple[int, int]:
        """(h, w) of the maps Triton returns: a model without maps gets zeros of S/32 x S/32 (model.py)."""
        return self.cam_size or (max(1, self.input_size // CAM_STRIDE),) * 2


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def _fixed(dims: list[int | str], what: str) -> list[int]:
    rest = dims[1:]
    if not all(isinstance(d, int) and d > 0 for d in rest):
        raise ModelRejected(f"{what} must have fixed dimensions after the batch axis, has {dims}")
    return [int(d) for d in rest]


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph stores: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)


def _external_locations(model: onnx.ModelProto) -> tuple[str, ...]:
    locations: set[str] = set()
    for tensor in _tensors(model.graph):
        if not uses_external_data(tensor):
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        location = PurePosixPath(entries.get("location", ""))
        if not location.parts or location.is_absolute() or ".." in location.parts:
            raise ModelRejected(f"external data location {str(location)!r} is not a file beside the model")
        locations.add(str(location))
    return tuple(sorted(locations))


def read_signature(path: Path) -> ModelSignature:
    """Check the graph's interface (``ModelRejected`` if it does not fit) and say where its weights live."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (OSError, DecodeError, ValueError) as exc:
        raise ModelRejected(f"{path.name} is not a readable ONNX model: {exc}") from exc
    initializers = {t.name for t in model.graph.initializer}
    inputs = {v.name: v for v in model.graph.input if v.name not in initializers}
    outputs = {v.name: v for v in model.graph.output}
    if set(inputs) != {INPUT_NAME} or OUTPUT_NAME not in outputs:
        raise ModelRejected(
            f"the model must take {INPUT_NAME!r} and return {OUTPUT_NAME!r}; it takes {sorted(inputs)} "
            f"and returns {sorted(outputs)}"
        )
    if inputs[INPUT_NAME].type.tensor_type.elem_type != onnx.TensorProto.UINT8:
        raise ModelRejected(
            f"{INPUT_NAME!r} must be uint8 greyscale pixels (the graph normalises them itself); export the "
            "model with cxr_triage.model.export.export_model"
        )
    for value in outputs.values():
        if value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise ModelRejected(f"{value.name!r} must be float32")
    image = _fixed(_dims(inputs[INPUT_NAME]), repr(INPUT_NAME))
    if len(image) != 3 or image[0] != 1 or image[1] != image[2]:
        raise ModelRejected(f"{INPUT_NAME!r} must be [N, 1, S, S], is {_dims(inputs[INPUT_NAME])}")
    if _fixed(_dims(outputs[OUTPUT_NAME]), repr(OUTPUT_NAME)) != [NUM_LABELS]:
        raise ModelRejected(f"{OUTPUT_NAME!r} must be [N, {NUM_LABELS}], is {_dims(outputs[OUTPUT_NAME])}")
    cam_size = None
    if CAM_OUTPUT_NAME in outputs:
        cams = _fixed(_dims(outputs[CAM_OUTPUT_NAME]), repr(CAM_OUTPUT_NAME))
        if len(cams) != 3 or cams[0] != NUM_LABELS:
            raise ModelRejected(
                f"{CAM_OUTPUT_NAME!r} must be [N, {NUM_LABELS}, h, w], is {_dims(outputs[CAM_OUTPUT_NAME])}"
            )
        cam_size = (cams[1], cams[2])
    return ModelSignature(input_size=image[1], cam_size=cam_size, external_data=_external_locations(model))
