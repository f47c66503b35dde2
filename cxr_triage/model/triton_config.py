"""The two ``config.pbtxt`` texts of the served model: same name, inputs, outputs, batching and version.

``python_backend_config`` is for the local tritonserver (the nvidia-pytriton wheel has only the Python
backend, whose ``model.py`` runs ONNX Runtime); ``onnxruntime_config`` is for NVIDIA's Triton container with
its ``onnxruntime`` backend (compose.yaml), which runs the same ``model.onnx``.
"""

from __future__ import annotations

from collections.abc import Mapping

from cxr_triage.labels import NUM_LABELS
from cxr_triage.model.contract import ModelContract
from cxr_triage.model.export import CAM_OUTPUT_NAME, INPUT_NAME, OUTPUT_NAME
from cxr_triage.model.serving import ServingSettings
from cxr_triage.model.signature import ModelSignature


def _dims(*values: int) -> str:
    return "[ " + ", ".join(str(v) for v in values) + " ]"


def _parameter(key: str, value: str) -> str:
    return f'parameters: {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}\n'


def _common(signature: ModelSignature, *, version: int, serving: ServingSettings) -> str:
    size = signature.input_size
    cam_h, cam_w = signature.cam_dims
    preferred = ""
    if serving.preferred_batch_sizes:
        preferred = f"  preferred_batch_size: {_dims(*serving.preferred_batch_sizes)}\n"
    return f"""max_batch_size: {serving.max_batch_size}
input [
  {{
    name: "{INPUT_NAME}"
    data_type: TYPE_UINT8
    dims: {_dims(1, size, size)}
  }}
]
output [
  {{
    name: "{OUTPUT_NAME}"
    data_type: TYPE_FP32
    dims: {_dims(NUM_LABELS)}
  }},
  {{
    name: "{CAM_OUTPUT_NAME}"
    data_type: TYPE_FP32
    dims: {_dims(NUM_LABELS, cam_h, cam_w)}
  }}
]
dynamic_batching {{
{preferred}  max_queue_delay_microseconds: {serving.max_queue_delay_us}
}}
version_policy: {{ specific: {{ versions: [ {version} ] }} }}
"""


def _contract(contract: ModelContract, extra: Mapping[str, str] | None = None) -> str:
    # The served version's own facts, read by the worker from Triton (get_model_config) with the input shape;
    # ``extra`` is the challenger's rollout state (``cxr_triage.model.rollout``).
    values = {**contract.parameters(), **(extra or {})}
    return "".join(_parameter(key, value) for key, value in sorted(values.items()))


def _instances(kind: str, count: int) -> str:
    return f"instance_group [\n  {{\n    kind: {kind}\n    count: {count}\n  }}\n]\n"


def _threads(serving: ServingSettings) -> str:
    return _parameter("intra_op_thread_count", str(serving.intra_op_threads)) + _parameter(
        "inter_op_thread_count", str(serving.inter_op_threads)
    )


def python_backend_config(
    model_name: str,
    *,
    signature: ModelSignature,
    version: int,
    serving: ServingSettings,
    contract: ModelContract,
    parameters: Mapping[str, str] | None = None,
) -> str:
    """config.pbtxt for the local tritonserver: the Python backend runs the ONNX file with ONNX Runtime."""
    return (
        f'name: "{model_name}"\nbackend: "python"\n'
        + _common(signature, version=version, serving=serving)
        # KIND_CPU: the Python stub runs on the CPU; model.py puts ONNX Runtime on CUDA itself when it can.
        + _instances("KIND_CPU", serving.instance_count)
        + _threads(serving)
        + _parameter("allow_spinning", "1" if serving.allow_spinning else "0")
        + _parameter("execution_providers", serving.execution_providers)
        + _contract(contract, parameters)
    )


def onnxruntime_config(
    model_name: str,
    *,
    signature: ModelSignature,
    version: int,
    serving: ServingSettings,
    contract: ModelContract,
    parameters: Mapping[str, str] | None = None,
) -> str:
    """The same model for NVIDIA's Triton container (onnxruntime backend; a GPU instance when it has one)."""
    return (
        f'name: "{model_name}"\nplatform: "onnxruntime_onnx"\n'
        + _common(signature, version=version, serving=serving)
        + _instances("KIND_AUTO", serving.instance_count)
        + _threads(serving)
        + _contract(contract, parameters)
    )
