"""The stack's components in start order, built from the settings."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Mapping
from functools import partial

from pydantic import SecretStr

from cxr_triage.settings import Address, Settings, connect_host
from deploy import kafka_broker, mlflow_server, prometheus_server, redis_server, triton_server
from deploy.probes import http_ok, kafka_ready, port_open, redis_ping
from deploy.spec import Component, Launch

logger = logging.getLogger(__name__)

KINDS: tuple[str, ...] = (
    "kafka",
    "redis",
    "mlflow",
    "triton",
    "worker",
    "api",
    "processors",
    "retrain",
    "rollout",
    "gateway",
    "prometheus",
)
SKIP_MODEL_INIT_ENV = "CXR_SKIP_MODEL_INIT"


class UnknownComponentError(ValueError):
    """``--only`` named something that is not a component."""


def settings_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) plus every effective setting as ``CXR_<NAME>``."""
    env = dict(os.environ if base is None else base)
    for name, value in settings.model_dump().items():
        if value is None:
            continue  # unset stays unset: str(None) would read back as the string "None"
        if isinstance(value, SecretStr):
            value = value.get_secret_value()  # a child must get the password itself, not its mask
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


def _mlflow_address(settings: Settings) -> Address:
    try:
        return settings.mlflow_address
    except ValueError:
        # A file-store tracking URI: no server to start here; `prepare` says so if asked to start it.
        return Address("127.0.0.1", 0)


def build_components(settings: Settings, env: Mapping[str, str]) -> list[Component]:
    """Every component, in start order (stop order is the reverse).

    Kafka, Redis, Triton and MLflow serve at their peer addresses' ports; workers and the API on CXR_BIND_HOST.
    """
    kafka = settings.kafka_address
    redis = settings.redis_address
    mlflow = _mlflow_address(settings)
    triton_http = settings.triton_http_address
    triton_grpc = settings.triton_grpc_address
    own_host = connect_host(settings.bind_host)
    components = [
        Component(
            name="kafka",
            port=kafka.port,
            ports=(kafka.port, settings.kafka_controller_port),
            prepare=lambda: kafka_broker.prepare(settings),
            probe=lambda: kafka_ready(kafka.host, kafka.port),
            start_timeout_s=90.0,
            after_healthy=lambda: kafka_broker.ensure_topics(settings),
            host=connect_host(settings.kafka_listen_host),
        ),
        Component(
            name="redis",
            port=redis.port,
            ports=(redis.port,),
            prepare=lambda: redis_server.prepare(settings),
            probe=lambda: redis_ping(settings),
            start_timeout_s=20.0,
            host=redis.host,
        ),
        Component(
            name="mlflow",
            port=mlflow.port,
            ports=(mlflow.port,),
            prepare=lambda: mlflow_server.prepare(settings),
            probe=lambda: http_ok(f"http://{mlflow.netloc}/health"),
            start_timeout_s=90.0,  # the first start creates and migrates the SQLite database
            host=mlflow.host,
        ),
        Component(
            name="triton",
            port=triton_http.port,
            ports=(triton_http.port, triton_grpc.port, settings.triton_metrics_port),
            prepare=lambda: _prepare_triton(settings, env),
            probe=lambda: http_ok(f"{settings.triton_http_url}/v2/health/live"),
            start_timeout_s=120.0,
            host=triton_http.host,
        ),
    ]

    def own(
        name: str, port: int, args: tuple[str, ...], *, path: str = "/metrics", timeout_s: float = 120.0
    ) -> Component:
        """One of our own processes: ``cxr-triage ARGS``, healthy once ``path`` answers on ``port``."""
        return Component(
            name=name,
            port=port,
            ports=(port,),
            prepare=partial(_cxr_command, *args),
            probe=partial(http_ok, f"{settings.local_url(port)}{path}"),
            start_timeout_s=timeout_s,
            host=own_host,
            stage=1,  # our processes connect to the peers at start-up: those come first
        )

    for index in range(settings.worker_count):
        port = settings.worker_metrics_port + index
        components.append(own(f"worker-{index}", port, ("worker", "run", "--index", str(index))))
    components.append(own("api", settings.api_port, ("api", "run"), path="/healthz", timeout_s=60.0))
    # The feedback loop: Faust stream processors (join, store, online metrics, drift, retrain trigger), the
    # worker that trains, gates and promotes challengers when asked, and the one that carries out the online
    # evaluation's promote / rollback decisions.
    if settings.processors_enabled:
        components.append(own("processors", settings.processors_port, ("processors", "run")))
    if settings.retrain_worker_enabled:
        components.append(own("retrain", settings.retrain_metrics_port, ("retrain-worker",)))
    if settings.rollout_worker_enabled:
        components.append(own("rollout", settings.rollout_metrics_port, ("rollout-worker",)))
    # The DICOM gateway: healthy once its metrics answer and its DICOM port accepts connections.
    if settings.gateway_enabled:
        metrics = f"{settings.local_url(settings.gateway_metrics_port)}/metrics"
        components.append(
            Component(
                name="gateway",
                port=settings.dicom_port,
                ports=(settings.dicom_port, settings.gateway_metrics_port),
                prepare=partial(_cxr_command, "dicom-gateway"),
                probe=lambda: http_ok(metrics) and port_open(own_host, settings.dicom_port),
                start_timeout_s=60.0,
                host=own_host,
                stage=1,
                details={
                    "ae_title": settings.dicom_ae_title,
                    "metrics_port": str(settings.gateway_metrics_port),
                },
            )
        )
    if observability_on(settings):
        prometheus = settings.prometheus_address
        components.append(
            Component(
                name="prometheus",
                port=prometheus.port,
                ports=(prometheus.port,),
                prepare=lambda: prometheus_server.prepare(settings),
                probe=lambda: http_ok(f"http://{prometheus.netloc}/-/ready"),
                start_timeout_s=60.0,
                host=prometheus.host,
            )
        )
    return components


def observability_on(settings: Settings) -> bool:
    """Asked for (CXR_OBSERVABILITY_ENABLED, ``up --observability``), or started by an earlier ``up``.

    The second keeps a running Prometheus in ``status`` and ``down`` without the flag, and in a later ``up``
    of the same stack until ``down`` has stopped it.
    """
    return settings.observability_enabled or (settings.run_dir / "prometheus.pid").is_file()


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


def ports_in_use(component: Component) -> list[int]:
    return [port for port in component.ports if port_open(component.host, port)]
