"""The Triton model repository: one model folder with numbered versions, changed only by atomic renames.

Layout written here (Triton polls it every few seconds, so it must never see a half-written version)::

    <repository>/<model>/config.pbtxt              Python backend (the local tritonserver has only that one)
    <repository>/<model>/config.onnxruntime.pbtxt  the same model for NVIDIA's onnxruntime backend (production)
    <repository>/<model>/<version>/model.onnx      the network (``inference_worker.export``)
    <repository>/<model>/<version>/model.py        Python-backend runner (``inference_worker/triton_model``)

A version is staged in a hidden folder beside the repository and renamed into place in one step.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import py_compile
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final

from cxr_triage.labels import NUM_LABELS
from cxr_triage.settings import Settings
from inference_worker.export import DEFAULT_SEED, INPUT_NAME, OUTPUT_NAME, export_untrained, read_metadata

logger = logging.getLogger(__name__)

MAX_BATCH_SIZE: Final = 32
QUEUE_DELAY_US: Final = 2000
INTRA_OP_THREADS: Final = 2  # the dev machine has 2 cores; Triton's own threads need the rest of the time
ONNX_FILE: Final = "model.onnx"
RUNNER_FILE: Final = "model.py"
CONFIG_FILE: Final = "config.pbtxt"
ONNXRUNTIME_CONFIG_FILE: Final = "config.onnxruntime.pbtxt"


@dataclass(frozen=True)
class ModelVersion:
    model_name: str
    version: int
    created: bool
    path: Path
    weights: str


def _io_block(input_size: int) -> str:
    return f"""max_batch_size: {MAX_BATCH_SIZE}
input [
  {{
    name: "{INPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ 3, {input_size}, {input_size} ]
  }}
]
output [
  {{
    name: "{OUTPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ {NUM_LABELS} ]
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: {QUEUE_DELAY_US}
}}
version_policy: {{ latest: {{ num_versions: 1 }} }}
"""


def _thread_parameters(intra_op_threads: int) -> str:
    return f"""parameters: {{
  key: "intra_op_thread_count"
  value: {{ string_value: "{intra_op_threads}" }}
}}
parameters: {{
  key: "inter_op_thread_count"
  value: {{ string_value: "1" }}
}}
"""


def python_backend_config(
    model_name: str, *, input_size: int, intra_op_threads: int = INTRA_OP_THREADS
) -> str:
    """config.pbtxt for the local tritonserver: the Python backend runs the ONNX file with onnxruntime."""
    return (
        f'name: "{model_name}"\nbackend: "python"\n'
        + _io_block(input_size)
        + "instance_group [\n  {\n    kind: KIND_CPU\n    count: 1\n  }\n]\n"
        + _thread_parameters(intra_op_threads)
        + 'parameters: {\n  key: "execution_providers"\n  value: { string_value: "auto" }\n}\n'
    )


def onnxruntime_config(model_name: str, *, input_size: int, intra_op_threads: int = INTRA_OP_THREADS) -> str:
    """The same model for NVIDIA's Triton container (onnxruntime backend; GPU when the container has one)."""
    return (
        f'name: "{model_name}"\nplatform: "onnxruntime_onnx"\n'
        + _io_block(input_size)
        + "instance_group [\n  {\n    kind: KIND_AUTO\n    count: 1\n  }\n]\n"
        + _thread_parameters(intra_op_threads)
    )


def list_versions(model_dir: Path) -> list[int]:
    """Complete versions in ``model_dir`` (numeric folders holding a model), oldest first."""
    if not model_dir.is_dir():
        return []
    return sorted(
        int(child.name)
        for child in model_dir.iterdir()
        if child.name.isdigit() and child.is_dir() and (child / ONNX_FILE).is_file()
    )


def _write_if_changed(path: Path, text: str) -> None:
    # Triton reloads a model whose config file changes, so an unchanged config is not touched.
    if path.exists() and path.read_text() == text:
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write_configs(model_dir: Path, *, model_name: str, input_size: int) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    _write_if_changed(model_dir / CONFIG_FILE, python_backend_config(model_name, input_size=input_size))
    _write_if_changed(
        model_dir / ONNXRUNTIME_CONFIG_FILE, onnxruntime_config(model_name, input_size=input_size)
    )


def _runner_source() -> bytes:
    return resources.files("inference_worker.triton_model").joinpath(RUNNER_FILE).read_bytes()


def staging_dir(repository: Path) -> Path:
    """A fresh folder on the repository's file system but outside it, so Triton never sees it."""
    repository.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=repository.parent, prefix=f".{repository.name}.staging-"))
    staged.chmod(0o755)  # mkdtemp makes it private; the server may run as another user (containers)
    return staged


def publish_version(staged: Path, model_dir: Path, version: int) -> Path:
    """Rename a complete staged version folder (``model.onnx`` inside) to ``model_dir/<version>``."""
    runner = staged / RUNNER_FILE
    runner.write_bytes(_runner_source())
    runner.chmod(0o644)
    # Compiled now, not by the backend stub on first load: a new __pycache__ folder would look like a change
    # of the version to Triton's repository poller and make it load the model a second time.
    py_compile.compile(str(runner), cfile=importlib.util.cache_from_source(str(runner)), doraise=True)
    target = model_dir / str(version)
    os.rename(staged, target)  # atomic; fails if another process already published this version
    return target


def ensure_model(settings: Settings, *, seed: int = DEFAULT_SEED) -> ModelVersion:
    """Make sure the model has a version; export an untrained DenseNet121 as version 1 if it has none."""
    model_dir = settings.model_repository / settings.model_name
    write_configs(model_dir, model_name=settings.model_name, input_size=settings.model_input_size)
    versions = list_versions(model_dir)
    if versions:
        return _existing(settings.model_name, model_dir, versions[-1])

    staged = staging_dir(settings.model_repository)
    try:
        export_untrained(staged / ONNX_FILE, input_size=settings.model_input_size, seed=seed)
        path = publish_version(staged, model_dir, 1)
    except OSError:
        versions = list_versions(model_dir)
        if not versions:
            raise
        logger.info("another process published the initial model first", extra={"version": versions[-1]})
        return _existing(settings.model_name, model_dir, versions[-1])
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    weights = read_metadata(path / ONNX_FILE).get("cxr.weights", "unknown")
    logger.info("initial model published", extra={"model_name": settings.model_name, "version": 1})
    return ModelVersion(settings.model_name, 1, created=True, path=path / ONNX_FILE, weights=weights)


def _existing(model_name: str, model_dir: Path, version: int) -> ModelVersion:
    path = model_dir / str(version) / ONNX_FILE
    weights = read_metadata(path).get("cxr.weights", "unknown")
    return ModelVersion(model_name, version, created=False, path=path, weights=weights)


def ensure_initial_model(settings: Settings) -> int:
    """Called by the stack supervisor before starting Triton: the newest version number, created if none."""
    return ensure_model(settings).version
