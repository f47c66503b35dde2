"""Settings of the inference worker (``CXR_WORKER_*``); the serving side is ``cxr_triage.model.serving``.

Where the peers are (ports, model name, input size, batch size) stays in ``cxr_triage.settings``; these classes
hold only what the inference service itself tunes. Both read the environment and ``.env`` like ``Settings``.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cxr_triage.priority import DEFAULT_WEIGHTS, weight_vector


class WorkerSettings(BaseSettings):
    """Behaviour of the inference worker beyond batch size and wait (those are in ``Settings``)."""

    model_config = SettingsConfigDict(env_prefix="CXR_WORKER_", env_file=".env", extra="ignore", frozen=True)

    priority_weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_WEIGHTS),
        description="Urgency weight per finding (JSON); named findings override the defaults",
    )
    triton_timeout_s: float = Field(default=30.0, gt=0.0, le=600.0)
    backoff_max_s: float = Field(default=10.0, ge=0.1, le=300.0, description="Longest wait between retries")
    lag_refresh_s: float = Field(default=5.0, ge=0.5, le=300.0, description="How often lag gauges refresh")
    fetch_queue_kbytes: int = Field(
        default=1024, ge=64, le=65536, description="librdkafka prefetch bound (queued.max.messages.kbytes)"
    )
    store_cams: bool = Field(default=True, description="Store class activation maps for the viewer")
    rollout_refresh_s: float = Field(
        default=5.0,
        ge=0.5,
        le=300.0,
        description="How often the rollout state (shadow / canary challenger) is read from Triton",
    )

    @field_validator("priority_weights")
    @classmethod
    def _known_findings(cls, value: dict[str, float]) -> dict[str, float]:
        merged = {**DEFAULT_WEIGHTS, **value}
        weight_vector(merged)  # raises ValueError on unknown labels, "No Finding" or negative weights
        return merged

    @property
    def weights(self) -> Mapping[str, float]:
        return self.priority_weights
