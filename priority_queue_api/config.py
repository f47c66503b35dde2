"""Settings of the worklist API itself (env ``CXR_API_*``); where peers are is in ``cxr_triage.settings``."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ApiPolicy(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CXR_API_", env_file=".env", extra="ignore", frozen=True)

    lease_s: int = Field(default=600, ge=10, description="Default lease of a claimed study")
    max_lease_s: int = Field(default=3600, ge=10, description="Longest lease a client may ask for")
    verdict_timeout_s: float = Field(
        default=5.0, gt=0.0, le=60.0, description="How long a verdict waits for Kafka's acknowledgement"
    )
    verdict_lookup_timeout_s: float = Field(
        default=10.0,
        gt=0.0,
        le=60.0,
        description="How long a retried verdict may read cxr.verdicts.v1 to learn whether Kafka already has it",
    )
    upload_timeout_s: float = Field(default=10.0, gt=0.0, le=120.0)
    max_upload_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    max_upload_pixels: int = Field(
        default=6144 * 6144, ge=64 * 64, description="Largest width x height accepted from an upload"
    )
    shutdown_flush_s: float = Field(default=5.0, ge=0.0, le=60.0, description="Flush of events at stop")
    image_max_side: int = Field(default=1024, ge=64, le=8192, description="Default side of served PNGs")
    monitor_interval_s: float = Field(
        default=10.0, gt=0.0, description="How often the worklist and Kafka lag gauges of /metrics refresh"
    )
    render_cache_max_mb: int = Field(
        default=2048,
        ge=1,
        description="Cap on the rendered PNGs kept under <home>/derived (least recently used go)",
    )
    render_cache_trim_interval_s: float = Field(
        default=300.0, gt=0.0, description="How often the rendering cache is checked against its cap"
    )

    @model_validator(mode="after")
    def _lease_bounds(self) -> Self:
        if self.lease_s > self.max_lease_s:
            raise ValueError(
                f"CXR_API_LEASE_S ({self.lease_s}) exceeds CXR_API_MAX_LEASE_S ({self.max_lease_s})"
            )
        return self
