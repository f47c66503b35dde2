"""Typed settings, read from the environment (prefix ``CXR_``) and an optional ``.env`` file."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything a cxr-triage process needs to find its peers; validated once at start."""

    model_config = SettingsConfigDict(env_prefix="CXR_", env_file=".env", extra="ignore")

    home: Path = Field(default=Path(".stack"), description="State folder: logs, pids, data, models")
    host: str = "127.0.0.1"

    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    kafka_partitions: int = Field(default=6, ge=1)
    kafka_heap: str = "512m"

    redis_port: int = 16379
    redis_key_prefix: str = "cxr"

    triton_http_port: int = 18000
    triton_grpc_port: int = 18001
    triton_metrics_port: int = 18002
    model_name: str = "cxr_classifier"
    model_input_size: int = Field(default=224, ge=32, le=1024)

    api_port: int = 8000
    worker_metrics_port: int = 9108
    producer_metrics_port: int = 0

    worker_group: str = "cxr-inference"
    worker_max_batch: int = Field(default=8, ge=1, le=256)
    worker_max_wait_ms: int = Field(default=100, ge=1)
    worker_count: int = Field(default=1, ge=0, le=16)

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        # Children run with other working directories; an absolute state path keeps them on the same data.
        return value.expanduser().resolve()

    @property
    def kafka_bootstrap(self) -> str:
        return f"{self.host}:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://{self.host}:{self.redis_port}/0"

    @property
    def triton_grpc_url(self) -> str:
        return f"{self.host}:{self.triton_grpc_port}"

    @property
    def image_store_dir(self) -> Path:
        return self.home / "images"

    @property
    def model_repository(self) -> Path:
        return self.home / "model_repository"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"


def load_settings() -> Settings:
    return Settings()
