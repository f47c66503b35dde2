"""The seam between the registry and serving: "add this ONNX file as a version" and "serve that version".

``TritonRepository`` is ``cxr_triage.model.repository``: ``add_version`` stages the file in as the next version
number (checking its signature and input size) without serving it, ``serve_version`` switches Triton to a
version (poll mode, no restart); ``serve`` then waits until Triton lists only that version, so a promotion
is complete when the command returns. Versions are never removed here: a rollback serves an older one.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Protocol

from cxr_triage.model import repository as model_repo
from cxr_triage.model.signature import ModelRejected
from cxr_triage.settings import Settings
from trainer.errors import ServingError

logger = logging.getLogger(__name__)


class ServingTarget(Protocol):
    def add(self, onnx_path: Path, *, metadata: dict[str, str]) -> str:
        """Store ``onnx_path`` as a new version (not served yet); return its version id."""
        ...

    def serve(self, version: str) -> None:
        """Serve ``version`` from now on."""
        ...

    def serving(self) -> str | None:
        """The version served now, or None."""
        ...

    def has(self, version: str) -> bool:
        """Whether ``version`` can be served again (it is still stored)."""
        ...


class TritonRepository:
    """The Triton model repository of ``settings`` (``$CXR_HOME/model_repository/<model_name>``)."""

    def __init__(self, settings: Settings, *, switch_timeout_s: float = 120.0) -> None:
        self.settings = settings
        self.switch_timeout_s = switch_timeout_s

    def add(self, onnx_path: Path, *, metadata: dict[str, str]) -> str:
        try:
            return str(model_repo.add_version(self.settings, onnx_path, metadata=metadata))
        except ModelRejected as exc:
            raise ServingError(f"Triton cannot serve this model: {exc}") from exc

    def serve(self, version: str) -> None:
        """Switch to ``version`` and, when Triton runs, return only once it serves that version alone."""
        try:
            model_repo.serve_version(self.settings, int(version))
        except model_repo.VersionNotFound as exc:
            raise ServingError(str(exc)) from exc
        self._wait_switched(version)

    def _wait_switched(self, version: str) -> None:
        # Triton polls the repository (every 2 s locally): a promotion is complete when studies scored from
        # now on get the new version, which is when Triton lists it as its only version.
        url = f"{self.settings.triton_http_url}/v2/models/{self.settings.model_name}"
        deadline = time.monotonic() + self.switch_timeout_s
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2.0) as response:
                    if json.load(response).get("versions") == [version]:
                        logger.info("Triton serves the new version", extra={"version": version})
                        return
            except urllib.error.HTTPError:
                pass  # 400 while the model reloads
            except OSError:
                logger.warning("Triton is not running: it will serve version %s when it starts", version)
                return
            if time.monotonic() > deadline:
                raise ServingError(
                    f"Triton did not switch to version {version} within {self.switch_timeout_s:.0f} s; "
                    f"see its log under {self.settings.logs_dir}"
                )
            time.sleep(0.5)

    def serving(self) -> str | None:
        version = model_repo.serving_version(self.settings)
        return None if version is None else str(version)

    def has(self, version: str) -> bool:
        return version.isdigit() and int(version) in model_repo.list_versions(self.settings)
