"""Triton Inference Server from the nvidia-pytriton wheel, run as a plain server over our model repository.

Mirrors what PyTriton itself does before it starts the binary (``pytriton.triton`` and
``pytriton.server.triton_server``): copy the distribution without the per-Python stubs, put the stub for
this interpreter into the Python backend, and run with the wheel's bundled libraries on the library path.
"""

from __future__ import annotations

import hashlib
import importlib.util
import ipaddress
import logging
import os
import shutil
import socket
import sys
import sysconfig
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path

from cxr_triage.settings import Settings
from deploy.spec import Launch, SetupError

logger = logging.getLogger(__name__)

VERSION_FILE = ".cxr-dist-version"


class TritonSetupError(SetupError):
    """The pytriton wheel does not provide what the server needs."""


def pytriton_root() -> Path:
    # find_spec locates the package without importing it (its __init__ pulls in the whole client).
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonSetupError("nvidia-pytriton is not installed in this environment: run `make setup`")
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_libs_dir(root: Path) -> Path:
    """The wheel's shared libraries (auditwheel's ``nvidia_pytriton.libs``; ``external_libs`` if editable)."""
    editable = root / "tritonserver" / "external_libs"
    return editable if editable.is_dir() else root.parent / "nvidia_pytriton.libs"


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def dist_dir(settings: Settings) -> Path:
    return settings.home / "triton" / "dist"


def _dist_version() -> str:
    return f"nvidia-pytriton {version('nvidia-pytriton')} python {python_version()}"


def ensure_dist(target: Path, *, source_root: Path | None = None) -> Path:
    """Copy the server distribution to ``target`` once per pytriton/Python version; return ``target``."""
    root = source_root or pytriton_root()
    wanted = _dist_version()
    marker = target / VERSION_FILE
    if marker.is_file() and marker.read_text().strip() == wanted:
        return target
    stub = root / "tritonserver" / "python_backend_stubs" / python_version() / "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonSetupError(f"no Triton Python-backend stub for Python {python_version()} at {stub}")
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(
        root / "tritonserver",
        staging,
        ignore=shutil.ignore_patterns("python_backend_stubs", "triton_python_backend_stub", "__pycache__"),
    )
    shutil.copy2(stub, staging / "backends" / "python" / "triton_python_backend_stub")
    (staging / VERSION_FILE).write_text(wanted + "\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.replace(target)
    logger.info("Triton distribution prepared", extra={"dir": str(target), "version": wanted})
    return target


def server_env(base: Mapping[str, str], *, libs_dir: Path) -> dict[str, str]:
    """Library and program search paths for tritonserver and its Python-backend stub.

    The interpreter's own ``LIBDIR`` goes first: otherwise the stub may load the system's libpython of the
    same version, and models fail with ``'_thread.RLock' object has no attribute '_recursion_count'``.
    The venv's ``bin`` goes first on PATH so the stub finds this interpreter's packages.
    """
    env = dict(base)
    lib_path = [str(sysconfig.get_config_var("LIBDIR")), str(libs_dir)]
    if env.get("LD_LIBRARY_PATH"):
        lib_path.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(lib_path)
    env["PATH"] = os.pathsep.join([str(Path(sys.prefix) / "bin"), env.get("PATH", os.defpath)])
    return env


def _bind_ip(host: str) -> str:
    """An IP literal for Triton's --*-address flags, which take no host names."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        try:
            return str(socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0])
        except OSError as exc:
            raise TritonSetupError(f"cannot resolve {host!r} to an address to listen on: {exc}") from exc


def server_args(settings: Settings, *, dist: Path) -> list[str]:
    """Serve HTTP (and metrics) at CXR_TRITON_HTTP_URL's host and port, gRPC at CXR_TRITON_GRPC_URL's."""
    http = settings.triton_http_address._replace(host=_bind_ip(settings.triton_http_address.host))
    grpc = settings.triton_grpc_address._replace(host=_bind_ip(settings.triton_grpc_address.host))
    # Per-home prefix: two stacks on one machine (a developer's and a test's) must not share shm segments.
    shm_prefix = "cxr_" + hashlib.sha256(str(settings.home).encode()).hexdigest()[:10] + "_"
    return [
        str(dist / "bin" / "tritonserver"),
        f"--model-repository={settings.model_repository}",
        f"--backend-directory={dist / 'backends'}",
        f"--cache-directory={dist / 'caches'}",
        f"--http-address={http.host}",
        f"--http-port={http.port}",
        f"--grpc-address={grpc.host}",
        f"--grpc-port={grpc.port}",
        f"--metrics-address={http.host}",
        f"--metrics-port={settings.triton_metrics_port}",
        "--allow-metrics=true",
        # Poll mode: a model written (or replaced) under the repository is loaded without a restart.
        "--model-control-mode=poll",
        "--repository-poll-secs=2",
        "--strict-readiness=false",
        "--exit-on-error=false",
        "--exit-timeout-secs=10",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
    ]


def prepare(settings: Settings, base_env: Mapping[str, str]) -> Launch:
    root = pytriton_root()
    dist = ensure_dist(dist_dir(settings), source_root=root)
    settings.model_repository.mkdir(parents=True, exist_ok=True)
    env = server_env(base_env, libs_dir=bundled_libs_dir(root))
    return Launch(argv=server_args(settings, dist=dist), env=env, cwd=dist.parent)
