"""One training run's configuration: built by the CLI, logged to MLflow as params, handed to every worker."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from trainer.data.policies import UncertaintyPolicy
from trainer.losses import LossName
from trainer.models import ARCHITECTURES, FineTune, Intensity, ModelSpec

Amp = Literal["off", "bf16", "fp16"]
Strategy = Literal["ddp", "fsdp"]


class TrainConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    architecture: str = Field(default="densenet121", pattern="^(" + "|".join(ARCHITECTURES) + ")$")
    weights: str | None = None
    finetune: FineTune = FineTune.FULL
    last_k: int = Field(default=2, ge=0)
    lora_rank: int = Field(default=8, ge=1)
    lora_alpha: int = Field(default=16, ge=1)
    input_size: int = Field(default=224, ge=32, le=1024)

    epochs: int = Field(default=3, ge=1)
    batch_size: int = Field(default=8, ge=1, description="per worker")
    grad_accum: int = Field(default=1, ge=1)
    max_steps_per_epoch: int | None = Field(default=None, ge=1, description="micro-batches; bounds tiny runs")
    lr: float = Field(default=1e-4, gt=0)
    weight_decay: float = Field(default=1e-5, ge=0)
    policy: UncertaintyPolicy = UncertaintyPolicy.IGNORE
    class_weights: bool = False
    loss: LossName = "bce"
    warmup_epochs: float = Field(default=0.0, ge=0, description="linear warm-up before the cosine decay")
    ema_decay: float | None = Field(
        default=None, gt=0, lt=1, description="validate, checkpoint and export an EMA of the weights"
    )
    augment: bool = True
    crop_min_area: float = Field(default=1.0, gt=0, le=1, description="random crops (1 = none)")
    equalize_p: float = Field(default=0.0, ge=0, le=1, description="chance of histogram equalisation")
    intensity: Intensity = Field(default="none", description="'equalize': every image equalised, served too")
    seed: int = 20240601

    num_workers: int = Field(default=2, ge=0, description="0 = Ray Train local mode (in this process)")
    cpus_per_worker: int = Field(default=1, ge=1)
    use_gpu: bool = False
    strategy: Strategy = "ddp"
    amp: Amp = "off"
    loader_workers: int = Field(default=0, ge=0)
    val_batch_size: int = Field(default=16, ge=1)
    progress: bool = True
    max_minutes: float | None = Field(
        default=None, gt=0, description="stop after the epoch that would overrun"
    )

    def model_spec(self) -> ModelSpec:
        return ModelSpec(
            architecture=self.architecture,
            weights=self.weights,
            finetune=self.finetune,
            last_k=self.last_k,
            lora_rank=self.lora_rank,
            lora_alpha=self.lora_alpha,
            input_size=self.input_size,
            intensity=self.intensity,
        )
