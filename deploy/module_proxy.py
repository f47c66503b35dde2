"""Files from a Go module's source zip on the Go module proxy, cached on disk.

Projects we deploy beside (KEDA, KubeRay, the Compose Specification) publish their schemas inside their Go
modules, and the Go module proxy serves every tagged version of a module as an immutable zip: the offline
checks of ``compose.yaml`` and ``deploy/k8s`` read the schemas from there, at a pinned version, without Go.
"""

from __future__ import annotations

import os
import urllib.request
import zipfile
from pathlib import Path

from tenacity import retry, stop_after_attempt, wait_exponential

DEFAULT_PROXY = "https://proxy.golang.org"


def cache_dir() -> Path:
    """``$CXR_SCHEMA_CACHE``, else ``~/.cache/cxr-triage/go-modules``."""
    override = os.environ.get("CXR_SCHEMA_CACHE")
    return Path(override) if override else Path.home() / ".cache" / "cxr-triage" / "go-modules"


def _escape(module: str) -> str:
    # The proxy protocol's case encoding: an upper-case letter becomes "!" and its lower case.
    return "".join(f"!{c.lower()}" if c.isupper() else c for c in module)


@retry(stop=stop_after_attempt(4), wait=wait_exponential(multiplier=1, max=10), reraise=True)
def _download(url: str, target: Path) -> None:
    partial = target.with_suffix(".partial")
    with urllib.request.urlopen(url, timeout=120) as response, partial.open("wb") as out:
        while chunk := response.read(1 << 20):
            out.write(chunk)
    partial.replace(target)


def module_zip(module: str, version: str, *, proxy: str | None = None) -> Path:
    """The module's zip at ``version`` (downloaded once into the cache)."""
    target = cache_dir() / f"{_escape(module).replace('/', '+')}@{version}.zip"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        base = (proxy or os.environ.get("CXR_GOPROXY") or DEFAULT_PROXY).rstrip("/")
        _download(f"{base}/{_escape(module)}/@v/{version}.zip", target)
    return target


def module_file(module: str, version: str, path: str, *, proxy: str | None = None) -> bytes:
    """The bytes of ``path`` (relative to the module's root) in the module at ``version``."""
    with zipfile.ZipFile(module_zip(module, version, proxy=proxy)) as archive:
        return archive.read(f"{module}@{version}/{path}")
