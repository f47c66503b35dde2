"""The Triton model repository: numbered versions of one model, and which of them is served.

Layout (Triton polls it every few seconds, so it must never see a half-written version)::

    <repository>/<model>/SERVING                   the served version number: the source of truth
    <repository>/<model>/config.pbtxt              Python backend (the local tritonserver has only that one)
    <repository>/<model>/config.onnxruntime.pbtxt  the same model for NVIDIA's onnxruntime backend (production)
    <repository>/<model>/<version>/model.onnx      the network (``cxr_triage.model.export``), external data beside
    <repository>/<model>/<version>/model.py        Python-backend runner (``cxr_triage/model/triton_model``)
    <repository>/<model>/<version>/metadata.json   what the caller of ``add_version`` said about it

A version is staged in a hidden folder beside the repository and renamed into place in one step. Adding a
version never changes what is served; ``serve_version`` does, by writing ``SERVING`` and then the configs'
``version_policy: { specific { versions: [v] } }``, which Triton (poll mode) applies without a restart.
A crash between the two writes is repaired by ``ensure_model`` (run by every ``cxr-triage up``), which
derives the configs from ``SERVING``.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import logging
import os
import py_compile
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Final

from cxr_triage.model.contract import ContractError, ModelContract
from cxr_triage.model.export import (
    CAM_OUTPUT_NAME,
    DEFAULT_SEED,
    export_untrained,
    read_metadata,
)
from cxr_triage.model.legacy import takes_float_input, upgrade_float_input
from cxr_triage.model.serving import ServingSettings
from cxr_triage.model.signature import ModelRejected, ModelSignature, read_signature
from cxr_triage.model.triton_config import onnxruntime_config, python_backend_config
from cxr_triage.settings import Settings

logger = logging.getLogger(__name__)

ONNX_FILE: Final = "model.onnx"
RUNNER_FILE: Final = "model.py"
METADATA_FILE: Final = "metadata.json"
SERVING_FILE: Final = "SERVING"
CONFIG_FILE: Final = "config.pbtxt"
ONNXRUNTIME_CONFIG_FILE: Final = "config.onnxruntime.pbtxt"
# compose.yaml copies config.onnxruntime.pbtxt here at container start; kept in sync so a switch reaches it.
NAMED_CONFIG: Final = Path("configs") / "onnxruntime.pbtxt"


class VersionNotFound(LookupError):
    """``serve_version`` named a version that the repository does not hold."""


@dataclass(frozen=True)
class ModelVersion:
    model_name: str
    version: int
    created: bool
    path: Path
    weights: str


def model_dir(settings: Settings) -> Path:
    return settings.model_repository / settings.model_name


def _versions_in(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(
        int(child.name)
        for child in folder.iterdir()
        if child.name.isdigit() and child.is_dir() and (child / ONNX_FILE).is_file()
    )


def list_versions(settings: Settings) -> list[int]:
    """Complete versions of the model (numeric folders holding a model), oldest first."""
    return _versions_in(model_dir(settings))


def serving_version(settings: Settings) -> int | None:
    """The version ``SERVING`` names, or None before anything was served."""
    try:
        text = (model_dir(settings) / SERVING_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def _write_if_changed(path: Path, text: str) -> None:
    # Triton reloads a model whose config file changes, so an unchanged config is not touched.
    if path.exists() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write_configs(
    folder: Path,
    *,
    model_name: str,
    signature: ModelSignature,
    version: int,
    contract: ModelContract,
    serving: ServingSettings | None = None,
    parameters: Mapping[str, str] | None = None,
) -> None:
    """Both configs, serving ``version`` of a model with ``signature``; files that would not change stay.

    ``parameters``: more ``cxr.*`` config parameters (the challenger's rollout state)."""
    serving = serving or ServingSettings()
    python = python_backend_config(
        model_name,
        signature=signature,
        version=version,
        serving=serving,
        contract=contract,
        parameters=parameters,
    )
    onnxrt = onnxruntime_config(
        model_name,
        signature=signature,
        version=version,
        serving=serving,
        contract=contract,
        parameters=parameters,
    )
    _write_if_changed(folder / CONFIG_FILE, python)
    _write_if_changed(folder / ONNXRUNTIME_CONFIG_FILE, onnxrt)
    if (folder / NAMED_CONFIG).parent.is_dir():
        _write_if_changed(folder / NAMED_CONFIG, onnxrt)


def model_contract(path: Path, *, version: int, input_size: int) -> ModelContract:
    """The contract in an ONNX file's metadata; the graph's own input size wins over what metadata says."""
    metadata = {**read_metadata(path), "cxr.input_size": str(input_size)}
    try:
        return ModelContract.from_mapping(metadata, version=str(version))
    except ContractError as exc:
        raise ModelRejected(f"version {version}: {exc}") from exc


def serve_version(settings: Settings, version: int, *, serving: ServingSettings | None = None) -> None:
    """Serve ``version`` from now on: Triton loads it and unloads the others within a few seconds.

    Studies already on the worklist keep the prediction of the version that scored them (they are not
    re-scored); every study scored after Triton has switched carries the new version number.
    """
    folder = model_dir(settings)
    if version not in _versions_in(folder):
        raise VersionNotFound(f"model {settings.model_name!r} has no version {version} in {folder}")
    path = folder / str(version) / ONNX_FILE
    signature = read_signature(path)
    contract = model_contract(path, version=version, input_size=signature.input_size)
    _write_if_changed(folder / SERVING_FILE, f"{version}\n")
    write_configs(
        folder,
        model_name=settings.model_name,
        signature=signature,
        version=version,
        contract=contract,
        serving=serving,
    )
    logger.info("serving model version", extra={"model_name": settings.model_name, "version": version})


def _runner_source() -> bytes:
    return resources.files("cxr_triage.model.triton_model").joinpath(RUNNER_FILE).read_bytes()


def staging_dir(repository: Path) -> Path:
    """A fresh folder on the repository's file system but outside it, so Triton never sees it."""
    repository.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=repository.parent, prefix=f".{repository.name}.staging-"))
    staged.chmod(0o755)  # mkdtemp makes it private; the server may run as another user (containers)
    return staged


def _add_runner(staged: Path) -> None:
    runner = staged / RUNNER_FILE
    runner.write_bytes(_runner_source())
    runner.chmod(0o644)
    # Compiled now, not by the backend stub on first load: a new __pycache__ folder would look like a change
    # of the version to Triton's repository poller and make it load the model a second time.
    py_compile.compile(str(runner), cfile=importlib.util.cache_from_source(str(runner)), doraise=True)


def publish_version(staged: Path, folder: Path, version: int) -> Path:
    """Rename a complete staged version folder (``model.onnx`` inside) to ``folder/<version>``."""
    _add_runner(staged)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / str(version)
    os.rename(staged, target)  # atomic; fails if another process already published this version
    return target


def _publish_next(staged: Path, folder: Path) -> int:
    _add_runner(staged)
    folder.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        # Every numeric folder counts, even an incomplete one: a number is never reused.
        taken = [int(c.name) for c in folder.iterdir() if c.name.isdigit()]
        version = max(taken, default=0) + 1
        try:
            os.rename(staged, folder / str(version))
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            continue  # another process took this number between the listing and the rename
        return version
    raise RuntimeError(f"could not find a free version number in {folder}")


def _copy_model(onnx_file: Path, staged: Path, signature: ModelSignature) -> None:
    shutil.copyfile(onnx_file, staged / ONNX_FILE)
    for location in signature.external_data:
        target = staged / location
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(onnx_file.parent / location, target)
    for path in staged.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def add_version(settings: Settings, onnx_file: Path, *, metadata: dict[str, str]) -> int:
    """Copy an exported model (and its external data files) in as the next version; return its number.

    The model must take ``image`` uint8 [N, 1, S, S] (any S: the worker reads it from the served version)
    and return ``probabilities`` [N, 14] and ``cams`` [N, 14, h, w] (``ModelRejected`` otherwise). What is
    served does not change: call ``serve_version`` for that. A model of the old convention (float
    [N, 3, S, S], normalised outside) is added as an upgraded copy that takes the pixels (``legacy``).
    """
    if takes_float_input(onnx_file):
        with tempfile.TemporaryDirectory(prefix="cxr-upgrade-") as tmp:
            upgraded = upgrade_float_input(onnx_file, Path(tmp) / onnx_file.name)
            return add_version(settings, upgraded, metadata={**metadata, "upgraded_from": "float-input"})
    signature = read_signature(onnx_file)
    if signature.cam_size is None:
        # Both Triton configs declare the maps; NVIDIA's onnxruntime backend would refuse a model without them.
        raise ModelRejected(
            f"the model has no {CAM_OUTPUT_NAME!r} output: export it with cxr_triage.model.export.export_model"
        )
    model_contract(onnx_file, version=0, input_size=signature.input_size)  # thresholds must be readable
    folder = model_dir(settings)
    staged = staging_dir(settings.model_repository)
    try:
        _copy_model(onnx_file, staged, signature)
        record = {
            **metadata,
            "added_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "source_file": onnx_file.name,
        }
        (staged / METADATA_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        (staged / METADATA_FILE).chmod(0o644)
        version = _publish_next(staged, folder)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    logger.info("model version added", extra={"model_name": settings.model_name, "version": version})
    return version


def version_metadata(settings: Settings, version: int) -> dict[str, str]:
    """What ``add_version`` recorded about ``version`` (empty for the initial export)."""
    try:
        raw = json.loads((model_dir(settings) / str(version) / METADATA_FILE).read_text())
    except FileNotFoundError:
        return {}
    return {str(k): str(v) for k, v in raw.items()}


def ensure_model(
    settings: Settings,
    *,
    seed: int = DEFAULT_SEED,
    input_size: int | None = None,
    serving: ServingSettings | None = None,
) -> ModelVersion:
    """Make sure a version is served: export an untrained DenseNet121 as version 1 if there is none.

    Its input size is ``input_size``, else ``settings.initial_model_input_size``.

    Re-derives the configs from ``SERVING`` (the newest version when a repository predates the pointer),
    so it also applies changed ``CXR_TRITON_*`` settings and completes an interrupted ``serve_version``.
    """
    folder = model_dir(settings)
    created = False
    if not _versions_in(folder):
        staged = staging_dir(settings.model_repository)
        try:
            export_untrained(
                staged / ONNX_FILE, input_size=input_size or settings.initial_model_input_size, seed=seed
            )
            publish_version(staged, folder, 1)
            created = True
            logger.info("initial model published", extra={"model_name": settings.model_name, "version": 1})
        except OSError:
            if not _versions_in(folder):
                raise
            logger.info("another process published the initial model first")
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    versions = _versions_in(folder)
    version = serving_version(settings)
    if version not in versions:
        version = versions[-1]
    if takes_float_input(folder / str(version) / ONNX_FILE):
        # Served by an earlier cxr-triage: versions stay as written, so an upgraded copy becomes the next one.
        old = version
        version = add_version(
            settings, folder / str(old) / ONNX_FILE, metadata={"upgraded_from_version": str(old)}
        )
        logger.warning(
            "served model takes float input; serving an upgraded copy that takes pixels",
            extra={"model_name": settings.model_name, "old_version": old, "version": version},
        )
    serve_version(settings, version, serving=serving)
    path = folder / str(version) / ONNX_FILE
    weights = read_metadata(path).get("cxr.weights", "unknown")
    return ModelVersion(settings.model_name, version, created=created, path=path, weights=weights)


def ensure_initial_model(settings: Settings) -> int:
    """Called by the stack supervisor before starting Triton: the served version, created if none."""
    return ensure_model(settings).version
