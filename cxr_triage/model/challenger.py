"""The challenger's folder in the Triton model repository: written by ``cxr-triage model shadow|canary``.

Layout, beside the champion's folder (``cxr_triage.model.repository``)::

    <repository>/<model>_challenger/ROLLOUT                  the rollout state (JSON): the source of truth
    <repository>/<model>_challenger/config.pbtxt             the version's contract + ``cxr.rollout.*``
    <repository>/<model>_challenger/config.onnxruntime.pbtxt the same for NVIDIA's onnxruntime backend
    <repository>/<model>_challenger/<version>/               a hard-linked copy of ``<model>/<version>``

The challenger keeps its registry version number, so Triton answers with it and its predictions carry it.
A version folder is staged outside the repository and renamed into place, as ``add_version`` does; the
configs are written after it, so Triton (poll mode) never sees a config naming a missing version. Stopping
renames the whole folder out of the repository in one step, and Triton unloads the challenger.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Final

from cxr_triage.events import RolloutMode
from cxr_triage.model.repository import (
    NAMED_CONFIG,
    ONNX_FILE,
    VersionNotFound,
    list_versions,
    model_contract,
    model_dir,
    serving_version,
    staging_dir,
    write_configs,
)
from cxr_triage.model.rollout import NONE, RolloutError, RolloutState, challenger_name
from cxr_triage.model.serving import ServingSettings
from cxr_triage.model.signature import read_signature
from cxr_triage.settings import Settings

logger = logging.getLogger(__name__)

ROLLOUT_FILE: Final = "ROLLOUT"


def challenger_dir(settings: Settings) -> Path:
    return settings.model_repository / challenger_name(settings.model_name)


def rollout_state(settings: Settings) -> RolloutState:
    """The rollout the repository holds (``NONE`` without a challenger folder)."""
    try:
        raw = json.loads((challenger_dir(settings) / ROLLOUT_FILE).read_text())
    except FileNotFoundError:
        return NONE
    return RolloutState.from_mapping({str(k): str(v) for k, v in raw.items()})


def _link_or_copy(source: str, target: str) -> None:
    # Hard links: a challenger costs no disk; a repository on another file system gets copies.
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _place_version(folder: Path, source: Path, version: int) -> None:
    target = folder / str(version)
    if (target / ONNX_FILE).is_file():
        return
    staged = staging_dir(folder.parent)
    try:
        copy = staged / "version"
        shutil.copytree(source / str(version), copy, copy_function=_link_or_copy)
        copy.chmod(0o755)
        folder.mkdir(parents=True, exist_ok=True)
        os.rename(copy, target)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def start_rollout(
    settings: Settings,
    version: int,
    *,
    mode: RolloutMode,
    fraction: float,
    serving: ServingSettings | None = None,
) -> RolloutState:
    """Serve ``version`` as the challenger in ``mode``; replaces any rollout in progress. Returns the state.

    ``VersionNotFound`` if the repository lacks it, ``RolloutError`` for the served version itself or a
    fraction outside (0, 1].
    """
    if mode == "none":
        raise RolloutError("a rollout needs mode shadow or canary; stop_rollout ends one")
    if version not in list_versions(settings):
        raise VersionNotFound(f"model {settings.model_name!r} has no version {version}")
    champion = serving_version(settings)
    if champion == version:
        raise RolloutError(f"version {version} is the served champion; a challenger must be another version")
    state = RolloutState(
        mode=mode,
        challenger_version=str(version),
        champion_version="" if champion is None else str(champion),
        fraction=fraction,
    )
    path = model_dir(settings) / str(version) / ONNX_FILE
    signature = read_signature(path)
    contract = model_contract(path, version=version, input_size=signature.input_size)
    folder = challenger_dir(settings)
    fresh = not folder.exists()
    # A new challenger is assembled outside the repository and renamed in whole: Triton never polls a model
    # folder without its config. A running one is changed in place, its version folder before the configs.
    staged = staging_dir(settings.model_repository) if fresh else None
    try:
        target = folder if staged is None else staged / folder.name
        target.mkdir(parents=True, exist_ok=True)
        target.chmod(0o755)
        if (model_dir(settings) / NAMED_CONFIG).parent.is_dir():
            (target / NAMED_CONFIG).parent.mkdir(exist_ok=True)  # compose's Triton reads the named config
        _place_version(target, model_dir(settings), version)
        _write_state(target, state)
        write_configs(
            target,
            model_name=challenger_name(settings.model_name),
            signature=signature,
            version=version,
            contract=contract,
            serving=serving,
            parameters=state.parameters(),
        )
        for child in target.iterdir():  # an earlier challenger's version: unloaded by the config just written
            if child.name.isdigit() and child.name != str(version):
                shutil.rmtree(child, ignore_errors=True)
        if staged is not None:
            os.rename(target, folder)
    finally:
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
    logger.info(
        "rollout started",
        extra={
            "mode": mode,
            "challenger_version": version,
            "champion_version": champion,
            "fraction": fraction,
        },
    )
    return state


def stop_rollout(settings: Settings) -> RolloutState:
    """Take the challenger out of the repository (Triton unloads it); returns the rollout that was running."""
    folder = challenger_dir(settings)
    state = rollout_state(settings)
    if not folder.exists():
        return state
    staged = staging_dir(settings.model_repository)
    try:
        os.rename(folder, staged / "stopped")  # one step: Triton never sees a half-removed model
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    logger.info("rollout stopped", extra={"mode": state.mode, "challenger_version": state.challenger_version})
    return state


def _write_state(folder: Path, state: RolloutState) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(state.parameters(), indent=2, sort_keys=True) + "\n"
    tmp = folder / f".{ROLLOUT_FILE}.tmp"
    tmp.write_text(text)
    tmp.chmod(0o644)
    os.replace(tmp, folder / ROLLOUT_FILE)
