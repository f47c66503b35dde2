"""Triton Python-backend model: runs the ``model.onnx`` beside this file with ONNX Runtime.

Copied by ``inference_worker.model_repo`` into ``<repository>/<model>/<version>/model.py``; the local Triton
(from the nvidia-pytriton wheel) has only the Python backend. Production can serve the same ``model.onnx``
with NVIDIA's onnxruntime backend (``config.onnxruntime.pbtxt``) and ignore this file.

Config parameters (``parameters`` in config.pbtxt, all optional):
``intra_op_thread_count`` / ``inter_op_thread_count`` (ORT threads, 0 = ORT's default) and
``execution_providers`` ("auto" = CUDA first when this onnxruntime build has it, else a comma list).
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


def _parameters(model_config: dict[str, Any]) -> dict[str, str]:
    return {key: value.get("string_value", "") for key, value in model_config.get("parameters", {}).items()}


def _providers(choice: str) -> list[str]:
    available = ort.get_available_providers()
    if choice and choice != "auto":
        return [name.strip() for name in choice.split(",") if name.strip()]
    preferred = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [name for name in preferred if name in available]


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        model_config = json.loads(args["model_config"])
        params = _parameters(model_config)
        version_dir = Path(args["model_repository"]) / args["model_version"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_thread_count") or 0)
        options.inter_op_num_threads = int(params.get("inter_op_thread_count") or 0)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(version_dir / "model.onnx"),
            sess_options=options,
            providers=_providers(params.get("execution_providers", "auto")),
        )
        self.logger = pb_utils.Logger
        self.logger.log_info(
            f"cxr model {args['model_name']} v{args['model_version']} loaded with "
            f"{self.session.get_providers()} threads={options.intra_op_num_threads}"
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        # Dynamic batching hands over several requests: run them as one ORT batch, then split the rows back.
        batches: list[np.ndarray] = []
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, INPUT_NAME)
            batches.append(np.asarray(tensor.as_numpy(), dtype=np.float32))
        try:
            probabilities = self.session.run([OUTPUT_NAME], {INPUT_NAME: np.concatenate(batches, axis=0)})[0]
        except Exception as exc:  # the backend boundary: every request of the batch gets the error
            error = pb_utils.TritonError(f"onnxruntime failed: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses = []
        start = 0
        for batch in batches:
            rows = np.ascontiguousarray(probabilities[start : start + len(batch)], dtype=np.float32)
            start += len(batch)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(OUTPUT_NAME, rows)]))
        return responses

    def finalize(self) -> None:
        del self.session
