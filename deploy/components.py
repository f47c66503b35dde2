"""The stack's components in start order, built from the settings."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Mapping
from functools import partial

from cxr_triage.settings import Settings
from deploy import kafka_broker, mlflow_server, redis_server, triton_server
from deploy.probes import http_ok, kafka_ready, port_open, redis_ping
from deploy.spec import Component, Launch

logger = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("kafka", "redis", "mlflow", "triton", "worker", "api")
SKIP_MODEL_INIT_ENV = "CXR_SKIP_MODEL_INIT"


class UnknownComponentError(ValueError):
    """``--only`` named something that is not a component."""


def settings_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) plus every effective setting as ``CXR_<NAME>``."""
    env = dict(os.environ if base is None else base)
    for name, value in settings.model_dump().items():
        env[f"CXR_{name.upper()}"] = str(value)
    return env


def _ensure_model(settings: Settings) -> None:
    """Put a servable model into the repository before Triton starts (skipped for stack-only tests)."""
    if os.environ.get(SKIP_MODEL_INIT_ENV) == "1":
        logger.info("model initialisation skipped", extra={"switch": SKIP_MODEL_INIT_ENV})
        return
    from cxr_triage.model.repository import ensure_initial_model

    ensure_initial_model(settings)


def _prepare_triton(settings: Settings, env: Mapping[str, str]) -> Launch:
    _ensure_model(settings)
    return triton_server.prepare(settings, env)


def _cxr_command(*args: str) -> Launch:
    return Launch(argv=[sys.executable, "-m", "cxr_triage", *args])


def build_components(settings: Settings, env: Mapping[str, str]) -> list[Component]:
    """Every component, in start order (stop order is the reverse)."""
    host = settings.host
    mlflow_port = mlflow_server.mlflow_port(settings)
    components = [
        Component(
            name="kafka",
            port=settings.kafka_port,
            ports=(settings.kafka_port, settings.kafka_controller_port),
            prepare=lambda: kafka_broker.prepare(settings),
            probe=lambda: kafka_ready(host, settings.kafka_port),
            start_timeout_s=90.0,
            after_healthy=lambda: kafka_broker.ensure_topics(settings),
        ),
        Component(
            name="redis",
            port=settings.redis_port,
            ports=(settings.redis_port,),
            prepare=lambda: redis_server.prepare(settings),
            probe=lambda: redis_ping(host, settings.redis_port),
            start_timeout_s=20.0,
        ),
        Component(
            name="mlflow",
            port=mlflow_port,
            ports=(mlflow_port,),
            prepare=lambda: mlflow_server.prepare(settings),
            probe=lambda: http_ok(f"http://{host}:{mlflow_port}/health"),
            start_timeout_s=90.0,  # the first start creates and migrates the SQLite database
        ),
        Component(
            name="triton",
            port=settings.triton_http_port,
            ports=(settings.triton_http_port, settings.triton_grpc_port, settings.triton_metrics_port),
            prepare=lambda: _prepare_triton(settings, env),
            probe=lambda: http_ok(f"http://{host}:{settings.triton_http_port}/v2/health/live"),
            start_timeout_s=120.0,
        ),
    ]
    for index in range(settings.worker_count):
        port = settings.worker_metrics_port + index
        components.append(
            Component(
                name=f"worker-{index}",
                port=port,
                ports=(port,),
                prepare=partial(_cxr_command, "worker", "run", "--index", str(index)),
                probe=partial(http_ok, f"http://{host}:{port}/metrics"),
                start_timeout_s=120.0,
            )
        )
    components.append(
        Component(
            name="api",
            port=settings.api_port,
            ports=(settings.api_port,),
            prepare=lambda: _cxr_command("api", "run"),
            probe=lambda: http_ok(f"http://{host}:{settings.api_port}/healthz"),
            start_timeout_s=60.0,
        )
    )
    return components


def select(components: Iterable[Component], only: str | None) -> list[Component]:
    """Keep the components ``only`` names (comma-separated kinds like ``worker`` or names like ``worker-0``)."""
    components = list(components)
    if not only or not only.strip():
        return components
    wanted = {part.strip() for part in only.split(",") if part.strip()}
    known = set(KINDS) | {c.name for c in components}
    unknown = sorted(wanted - known)
    if unknown:
        raise UnknownComponentError(
            f"unknown component(s) {', '.join(unknown)}; choose from {', '.join(KINDS)}"
        )
    return [c for c in components if c.name in wanted or c.kind in wanted]


def ports_in_use(component: Component, host: str) -> list[int]:
    return [port for port in component.ports if port_open(host, port)]
