"""Typed settings, read from the environment (prefix ``CXR_``) and an optional ``.env`` file.

Each peer has one address setting (Kafka, Redis, Triton, MLflow); the defaults are where the local stack
(``cxr-triage up``) serves them, and the local stack also starts each service at the port of its address,
so an address is never written twice. Our own servers (API, worker and producer metrics) listen on
``CXR_BIND_HOST``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Default ports of URL schemes whose URL may leave the port out.
_SCHEME_PORTS = {"http": 80, "https": 443, "redis": 6379, "rediss": 6379}
# Hosts that mean "every interface": a server binds them, a client on the same machine uses loopback.
_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}
# Settings replaced by one address per peer: refused rather than silently ignored (extra="ignore").
_REPLACED = {
    "host": "CXR_KAFKA_BOOTSTRAP_SERVERS, CXR_REDIS_URL, CXR_TRITON_*_URL, CXR_MLFLOW_TRACKING_URI, CXR_BIND_HOST",
    "kafka_port": "CXR_KAFKA_BOOTSTRAP_SERVERS=host:port",
    "redis_port": "CXR_REDIS_URL=redis://host:port/0",
    "triton_http_port": "CXR_TRITON_HTTP_URL=http://host:port",
    "triton_grpc_port": "CXR_TRITON_GRPC_URL=host:port",
    "mlflow_port": "CXR_MLFLOW_TRACKING_URI=http://host:port",
}


class Address(NamedTuple):
    """A TCP address: a host name or IP literal and a port."""

    host: str
    port: int

    @property
    def netloc(self) -> str:
        """``host:port``, with an IPv6 literal in brackets (as URLs and Kafka listeners need it)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(text: str) -> Address:
    """``host:port`` or ``[v6]:port`` (a Kafka bootstrap server, a Triton gRPC URL) as an ``Address``."""
    parts = urlsplit(f"//{text.strip()}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{text!r}: the port is not a number from 0 to 65535") from exc
    if not parts.hostname or port is None or parts.path or parts.username is not None:
        raise ValueError(f"{text!r} is not host:port")
    return Address(parts.hostname, port)


def parse_url_address(url: str) -> Address:
    """Host and port of a network URL, the scheme's default port if it has none (``http://h`` -> 80)."""
    parts = urlsplit(url)
    port = parts.port or _SCHEME_PORTS.get(parts.scheme)
    if not parts.hostname or port is None:
        # The URL itself stays out of the message: it may carry a password.
        raise ValueError("no host and port (want scheme://host:port)")
    return Address(parts.hostname, port)


def connect_host(bind_host: str) -> str:
    """Where a client on this machine reaches a server bound to ``bind_host`` (loopback for a wildcard)."""
    return _WILDCARDS.get(bind_host, bind_host)


class Settings(BaseSettings):
    """Everything a cxr-triage process needs to find its peers; validated once at start."""

    # Errors never echo their input: it may hold the Redis password (or a URL with one in it).
    model_config = SettingsConfigDict(
        env_prefix="CXR_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    home: Path = Field(default=Path(".stack"), description="State folder: logs, pids, data, models")

    # Peers. The local stack starts Kafka, Redis, Triton and MLflow at these addresses' ports (Kafka listening
    # on kafka_listen_host, the others on their address's host), so point them elsewhere only for a peer
    # that runs elsewhere, or to make the local one listen on another interface.
    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:19092", description="Comma-separated host:port; the first is the local broker's"
    )
    # How long a producer keeps a message it cannot deliver (broker down or restarting) before that send
    # fails and is reported; a producer's flush waits as long. Raise it to ride out longer broker restarts.
    kafka_message_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    redis_url: str = "redis://127.0.0.1:16379/0"
    # Unset: the password `cxr-triage up` generated into <home>/secrets/redis.password, if there is one.
    redis_password: SecretStr | None = None
    # Key of the patient and study pseudonyms (HMAC). Unset: <home>/secrets/pseudonym.key, generated on first
    # use. Every producer of one site must share it, or one study gets two pseudonyms.
    pseudonym_key: SecretStr | None = None
    triton_grpc_url: str = "127.0.0.1:18001"
    triton_http_url: str = "http://127.0.0.1:18000"
    mlflow_tracking_uri: str = "http://127.0.0.1:15000"
    # Prometheus: the API's system view queries it; `up --observability` starts one at this address's port.
    prometheus_url: str = "http://127.0.0.1:19090"

    # Our own servers listen on bind_host (loopback unless set, e.g. 0.0.0.0 in a container).
    bind_host: str = "127.0.0.1"
    api_port: int = 8000
    worker_metrics_port: int = 9108
    producer_metrics_port: int = 0
    # The stream processors' web port (Faust's, serving /metrics) and the retrain worker's metrics port.
    processors_port: int = 9120
    retrain_metrics_port: int = 9121
    # The rollout worker (carries out the online-evaluation policy's promote / rollback decisions).
    rollout_metrics_port: int = 9122
    # The DICOM gateway (C-STORE SCP): its DICOM port and AE title, and its metrics port.
    dicom_port: int = 11112
    dicom_ae_title: str = "CXR_TRIAGE"
    gateway_metrics_port: int = 9123
    # A study is complete when its association ended, or when no image of it came for this long.
    dicom_quiet_s: float = Field(default=10.0, gt=0)
    # A sender that stays silent this long loses its association (one that never releases).
    dicom_network_timeout_s: float = Field(default=60.0, gt=0)
    dicom_max_associations: int = Field(default=16, ge=1)

    # The local stack only: where its broker listens (the advertised address is the first bootstrap server),
    # the controller's loopback port, and Triton's metrics port (on the host of triton_http_url).
    kafka_listen_host: str = "127.0.0.1"
    kafka_controller_port: int = 19093
    kafka_partitions: int = Field(default=6, ge=1)
    kafka_heap: str = "512m"
    triton_metrics_port: int = 18002

    redis_key_prefix: str = "cxr"
    # The feedback store (SQLite); unset: <home>/feedback/feedback.sqlite3. Readers must see the same file.
    feedback_db: Path | None = None
    model_name: str = "cxr_classifier"
    # Size of the untrained model that `up` / `model init` export into an empty repository. Only that export
    # uses it: every served model states its own input size, which the workers read from Triton.
    initial_model_input_size: int = Field(default=224, ge=32, le=1024)

    worker_group: str = "cxr-inference"
    worker_max_batch: int = Field(default=8, ge=1, le=256)
    worker_max_wait_ms: int = Field(default=100, ge=1)
    worker_count: int = Field(default=1, ge=0, le=16)
    # The feedback loop's processes, which `cxr-triage up` starts unless switched off here.
    processors_enabled: bool = True
    retrain_worker_enabled: bool = True
    rollout_worker_enabled: bool = True
    gateway_enabled: bool = True
    # Prometheus scraping every local service, with the alert rules of deploy/prometheus/rules
    # (`cxr-triage up --observability`); the scrape interval is also the rules' evaluation interval.
    observability_enabled: bool = False
    prometheus_scrape_interval_s: float = Field(default=15.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _no_replaced_settings(cls, data: Any) -> Any:
        given = set(data) if isinstance(data, dict) else set()
        given |= {name for name in _REPLACED if f"CXR_{name.upper()}" in os.environ}
        stale = sorted(given & _REPLACED.keys())
        if stale:
            hints = "; ".join(f"CXR_{name.upper()}: use {_REPLACED[name]}" for name in stale)
            raise ValueError(f"settings replaced by one address per peer: {hints}")
        return data

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        # Children run with other working directories; an absolute state path keeps them on the same data.
        return value.expanduser().resolve()

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _bootstrap_servers(cls, value: str) -> str:
        servers = [part.strip() for part in value.split(",") if part.strip()]
        if not servers:
            raise ValueError("at least one host:port is needed")
        for server in servers:
            parse_host_port(server)
        return ",".join(servers)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("redis", "rediss"):
            raise ValueError("want redis://host:port/db or rediss://host:port/db")
        parse_url_address(value)
        return value

    @field_validator("redis_password", "pseudonym_key", mode="before")
    @classmethod
    def _empty_password_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("pseudonym_key")
    @classmethod
    def _long_key(cls, value: SecretStr | None) -> SecretStr | None:
        # A short key could be guessed, and with it every pseudonym tested against known names and UIDs.
        if value is not None and len(value.get_secret_value().encode()) < 32:
            raise ValueError("the pseudonym key must be at least 32 bytes (e.g. `openssl rand -base64 48`)")
        return value

    @field_validator("dicom_ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        # PS3.5 6.2: an AE title is 1-16 printable ASCII characters, no backslash, not only spaces.
        stripped = value.strip()
        if not 1 <= len(stripped) <= 16 or not all(" " <= c <= "~" and c != "\\" for c in stripped):
            raise ValueError("an AE title is 1 to 16 printable ASCII characters without a backslash")
        return stripped

    @field_validator("triton_grpc_url")
    @classmethod
    def _grpc_url(cls, value: str) -> str:
        parse_host_port(value)  # tritonclient.grpc takes host:port, no scheme
        return value

    @field_validator("triton_http_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("want http://host:port")
        parse_url_address(value)
        return value.rstrip("/")

    @property
    def kafka_address(self) -> Address:
        """The first bootstrap server: where the local broker serves and advertises itself."""
        return parse_host_port(self.kafka_bootstrap_servers.split(",")[0])

    @property
    def redis_address(self) -> Address:
        return parse_url_address(self.redis_url)

    @property
    def triton_grpc_address(self) -> Address:
        return parse_host_port(self.triton_grpc_url)

    @property
    def triton_http_address(self) -> Address:
        return parse_url_address(self.triton_http_url)

    @property
    def prometheus_address(self) -> Address:
        return parse_url_address(self.prometheus_url)

    @property
    def mlflow_address(self) -> Address:
        """Where the local MLflow server listens; ValueError if the tracking URI is not a network URL."""
        return parse_url_address(self.mlflow_tracking_uri)

    def local_url(self, port: int) -> str:
        """``http://`` URL of one of our own servers (API, metrics) from a client on this machine."""
        return f"http://{Address(connect_host(self.bind_host), port).netloc}"

    @property
    def api_url(self) -> str:
        return self.local_url(self.api_port)

    def redis_auth(self) -> SecretStr | None:
        """``CXR_REDIS_PASSWORD``, else the password in the state folder, else None (no AUTH).

        Read at each call, not at start: `cxr-triage up` writes the file after its settings were loaded.
        """
        if self.redis_password is not None:
            return self.redis_password
        try:
            text = self.redis_password_file.read_text().strip()
        except FileNotFoundError:
            return None
        return SecretStr(text) if text else None

    @property
    def secrets_dir(self) -> Path:
        return self.home / "secrets"

    @property
    def redis_password_file(self) -> Path:
        return self.secrets_dir / "redis.password"

    @property
    def pseudonym_key_file(self) -> Path:
        return self.secrets_dir / "pseudonym.key"

    @property
    def image_store_dir(self) -> Path:
        return self.home / "images"

    @property
    def model_repository(self) -> Path:
        return self.home / "model_repository"

    @property
    def feedback_db_path(self) -> Path:
        return (
            self.feedback_db.expanduser().resolve()
            if self.feedback_db
            else self.home / "feedback" / "feedback.sqlite3"
        )

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def mlflow_db(self) -> Path:
        return self.mlflow_dir / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.mlflow_dir / "artifacts"


def load_settings() -> Settings:
    return Settings()
