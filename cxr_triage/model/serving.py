"""Serving settings of the model (``CXR_TRITON_*``): what goes into the Triton model configuration."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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
