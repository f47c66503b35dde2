"""Triton Python-backend model: runs the ``model.onnx`` beside this file with ONNX Runtime.

Copied by ``cxr_triage.model.repository`` into ``<repository>/<model>/<version>/model.py``; the local Triton
(from the nvidia-pytriton wheel) has only the Python backend. Production serves the same ``model.onnx`` with
NVIDIA's onnxruntime backend (``config.onnxruntime.pbtxt``) and ignores this file.

Config parameters (``parameters`` in config.pbtxt, all optional):
``intra_op_thread_count`` / ``inter_op_thread_count`` (ORT threads, 0 = ORT's default),
``allow_spinning`` ("0" = idle ORT threads sleep instead of busy-waiting; see docs/serving.md) and
``execution_providers`` ("auto" = CUDA first when this onnxruntime build has it, else a comma list).

Outputs: ``probabilities`` and ``cams``; ONNX Runtime computes only the outputs the batch's requests ask for,
so a client that does not want the maps does not pay for them. A model exported before maps existed gets
maps of zeros (the worker then stores none).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
CAM_OUTPUT_NAME = "cams"
OUTPUTS = (OUTPUT_NAME, CAM_OUTPUT_NAME)


def _parameters(model_config: dict[str, Any]) -> dict[str, str]:
    return {key: value.get("string_value", "") for key, value in model_config.get("parameters", {}).items()}


def _providers(choice: str, device_id: int) -> list[Any]:
    available = ort.get_available_providers()
    if choice and choice != "auto":
        names = [name.strip() for name in choice.split(",") if name.strip()]
    else:
        names = [name for name in ("CUDAExecutionProvider", "CPUExecutionProvider") if name in available]
    return [(name, {"device_id": device_id}) if name == "CUDAExecutionProvider" else name for name in names]


def _cam_dims(model_config: dict[str, Any]) -> tuple[int, int]:
    for output in model_config.get("output", []):
        if output.get("name") == CAM_OUTPUT_NAME:
            dims = [int(d) for d in output.get("dims", [])]
            return dims[-2], dims[-1]
    return 1, 1


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        model_config = json.loads(args["model_config"])
        params = _parameters(model_config)
        version_dir = Path(args["model_repository"]) / args["model_version"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_thread_count") or 0)
        options.inter_op_num_threads = int(params.get("inter_op_thread_count") or 0)
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        spinning = "1" if params.get("allow_spinning", "0") == "1" else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
        device_id = int(args.get("model_instance_device_id") or 0)
        self.session = ort.InferenceSession(
            str(version_dir / "model.onnx"),
            sess_options=options,
            providers=_providers(params.get("execution_providers", "auto"), device_id),
        )
        self.has_cams = CAM_OUTPUT_NAME in {output.name for output in self.session.get_outputs()}
        self.cam_dims = _cam_dims(model_config)
        pb_utils.Logger.log_info(
            f"cxr model {args['model_name']} v{args['model_version']} loaded with "
            f"{self.session.get_providers()} intra_op={options.intra_op_num_threads} "
            f"inter_op={options.inter_op_num_threads} spinning={spinning} cams={self.has_cams}"
        )

    def _wanted(self, requests: list[Any]) -> list[str]:
        names: set[str] = set()
        for request in requests:
            asked = request.requested_output_names()
            names.update(asked if asked else OUTPUTS)  # no list means "all outputs" in Triton's protocol
        return [name for name in OUTPUTS if name in names]

    def _run(self, images: np.ndarray, wanted: list[str]) -> dict[str, np.ndarray]:
        fetch = [name for name in wanted if name != CAM_OUTPUT_NAME or self.has_cams]
        results = dict(zip(fetch, self.session.run(fetch, {INPUT_NAME: images}), strict=True))
        if CAM_OUTPUT_NAME in wanted and not self.has_cams:
            results[CAM_OUTPUT_NAME] = np.zeros((len(images), 14, *self.cam_dims), dtype=np.float32)
        return results

    def execute(self, requests: list[Any]) -> list[Any]:
        # Dynamic batching hands over several requests: run them as one ORT batch, then split the rows back.
        batches: list[np.ndarray] = []
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, INPUT_NAME)
            batches.append(np.asarray(tensor.as_numpy(), dtype=np.uint8))  # pixels: the graph normalises
        wanted = self._wanted(requests)
        try:
            results = self._run(np.concatenate(batches, axis=0), wanted)
        except Exception as exc:  # the backend boundary: every request of the batch gets the error
            error = pb_utils.TritonError(f"onnxruntime failed: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses = []
        start = 0
        for batch in batches:
            rows = slice(start, start + len(batch))
            start += len(batch)
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(results[name][rows], dtype=np.float32))
                for name in wanted
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self) -> None:
        del self.session
