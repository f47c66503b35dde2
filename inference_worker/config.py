"""Settings of the serving side (Triton model configuration, ``CXR_TRITON_*``) and of the worker (``CXR_WORKER_*``).

Where the peers are (ports, model name, input size, batch size) stays in ``cxr_triage.settings``; these classes
hold only what the inference service itself tunes. Both read the environment and ``.env`` like ``Settings``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from inference_worker.priority import DEFAULT_WEIGHTS, weight_vector


class ServingSettings(BaseSettings):
    """What goes into ``config.pbtxt``: batching, instances and ONNX Runtime threads (docs/serving.md).

    The thread defaults were measured on the 2-core development machine: one Python-backend instance whose
    ONNX Runtime uses both cores for one batch (intra-op 2, inter-op 1), with spinning threads off so that an
    idle session does not burn the CPU that the worker and Triton itself need.
    """

    model_config = SettingsConfigDict(env_prefix="CXR_TRITON_", env_file=".env", extra="ignore", frozen=True)

    instance_count: int = Field(default=1, ge=1, le=16, description="Model instances (one ORT session each)")
    intra_op_threads: int = Field(default=2, ge=0, le=256, description="ORT intra-op threads; 0 = all cores")
    inter_op_threads: int = Field(default=1, ge=0, le=256, description="ORT inter-op threads; 0 = default")
    allow_spinning: bool = Field(default=False, description="Let idle ORT threads spin (busy-wait)")
    execution_providers: str = Field(
        default="auto", description='"auto" (CUDA when available, else CPU) or a comma-separated list'
    )
    max_batch_size: int = Field(default=32, ge=1, le=1024)
    preferred_batch_sizes: tuple[int, ...] = Field(
        default=(8, 16), description="Batches the dynamic batcher forms without waiting for the queue delay"
    )
    max_queue_delay_us: int = Field(default=2000, ge=0, le=10_000_000)

    @model_validator(mode="after")
    def _preferred_within_max(self) -> Self:
        too_big = [size for size in self.preferred_batch_sizes if not 1 <= size <= self.max_batch_size]
        if too_big:
            raise ValueError(
                f"CXR_TRITON_PREFERRED_BATCH_SIZES {too_big} must lie in [1, {self.max_batch_size}] "
                "(CXR_TRITON_MAX_BATCH_SIZE)"
            )
        return self


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

    @field_validator("priority_weights")
    @classmethod
    def _known_findings(cls, value: dict[str, float]) -> dict[str, float]:
        merged = {**DEFAULT_WEIGHTS, **value}
        weight_vector(merged)  # raises ValueError on unknown labels, "No Finding" or negative weights
        return merged

    @property
    def weights(self) -> Mapping[str, float]:
        return self.priority_weights
