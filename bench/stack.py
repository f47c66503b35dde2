"""The stack a benchmark runs against: a private one (temp state folder, free ports, the real
``cxr-triage up --detach``) or, with ``--use-running``, the one this environment's settings point at."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cxr_triage.model import repository
from cxr_triage.settings import Settings, load_settings
from deploy.testing import cxr, stack_env

logger = logging.getLogger(__name__)

BENCH_COMPONENTS: Final = "kafka,redis,triton,worker"
# Settings a private stack takes over from the caller's environment: what is measured, never where it runs.
INHERITED: Final = ("INITIAL_MODEL_INPUT_SIZE", "WORKER_MAX_BATCH", "WORKER_MAX_WAIT_MS", "KAFKA_PARTITIONS")


class StackFailed(RuntimeError):
    """``cxr-triage up`` did not bring the stack up."""


@dataclass(frozen=True)
class BenchStack:
    settings: Settings
    env: dict[str, str]
    private: bool

    def model_file(self) -> tuple[Path, str]:
        """The served model version (``SERVING``, else the newest): (its ONNX file, its version)."""
        folder = repository.model_dir(self.settings)
        versions = repository.list_versions(self.settings)
        if not versions:
            raise StackFailed(f"no model version under {folder}: run `cxr-triage model init`")
        version = repository.serving_version(self.settings)
        if version not in versions:
            version = versions[-1]
        return folder / str(version) / repository.ONNX_FILE, str(version)


def settings_from_env(env: Mapping[str, str]) -> Settings:
    fields = set(Settings.model_fields)
    values = {key[4:].lower(): value for key, value in env.items() if key.startswith("CXR_")}
    return Settings.model_validate({key: value for key, value in values.items() if key in fields})


def private_env(
    home: Path, *, worker_count: int, overrides: Mapping[str, str] | None = None
) -> dict[str, str]:
    env = stack_env(home, worker_count=worker_count, skip_model_init=False)
    for name in INHERITED:
        if f"CXR_{name}" in os.environ:
            env[f"CXR_{name}"] = os.environ[f"CXR_{name}"]
    env.update(overrides or {})
    return env


@contextmanager
def private_stack(
    *,
    components: str = BENCH_COMPONENTS,
    worker_count: int = 1,
    overrides: Mapping[str, str] | None = None,
    start_timeout_s: float = 600.0,
) -> Iterator[BenchStack]:
    """Start ``components`` in a temporary state folder on free loopback ports; stop and remove it after."""
    home = Path(tempfile.mkdtemp(prefix="cxr-bench-stack-"))
    env = private_env(home, worker_count=worker_count, overrides=overrides)
    logger.info("starting a private stack", extra={"home": str(home), "components": components})
    try:
        started = cxr(["up", "--detach", "--only", components], env, timeout_s=start_timeout_s)
        if started.returncode != 0:
            raise StackFailed(f"cxr-triage up exited {started.returncode}: {started.stderr[-2000:]}")
        yield BenchStack(settings_from_env(env), env, private=True)
    finally:
        stopped = cxr(["down"], env, timeout_s=180.0)
        if stopped.returncode != 0:
            logger.warning("cxr-triage down failed", extra={"stderr": stopped.stderr[-2000:]})
        shutil.rmtree(home, ignore_errors=True)


def running_stack() -> BenchStack:
    """The stack this environment's ``CXR_*`` settings point at (``--use-running``)."""
    return BenchStack(load_settings(), dict(os.environ), private=False)
