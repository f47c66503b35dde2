"""Trainer settings: the stack's ``Settings`` plus MLflow, Ray and gate fields (env prefix ``CXR_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from cxr_triage.settings import Settings

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cxr-public"


class TrainerSettings(Settings):
    """Everything ``cxr-triage train / evaluate / promote / rollback`` need; validated once at start.

    Subclasses the shared ``Settings`` so that the trainer reads the same ``CXR_HOME``, model name, serving
    input size and MLflow tracking URI (``CXR_MLFLOW_TRACKING_URI``) as the stack it promotes into.
    """

    mlflow_experiment: str = "cxr-triage"
    registered_model: str = "cxr_classifier"

    # Empty: start a private local Ray cluster for the run; else the address of an existing one ("auto", ...).
    ray_address: str = ""
    ray_num_cpus: int = Field(default=2, ge=1)
    ray_tmpdir: Path | None = None

    target_sensitivity: float = Field(default=0.95, gt=0.0, le=1.0)
    # PPV for an urgent finding that the critical tier's threshold must reach on validation data (trainer.tiers)
    critical_ppv: float = Field(default=0.8, gt=0.0, le=1.0)
    gate_margin: float = Field(default=0.005, ge=0.0)
    # The fixed evaluation split of the gate: a CheXpert-layout folder and which of its splits to score.
    eval_data: Path = DEFAULT_DATA
    eval_split: Literal["all", "train", "val", "test"] = "val"
    split_seed: int = 20240601
    val_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)

    @property
    def ray_dir(self) -> Path:
        return self.ray_tmpdir or self.home / "ray"

    @property
    def checkpoints_dir(self) -> Path:
        return self.home / "checkpoints"


def load_trainer_settings(**overrides: object) -> TrainerSettings:
    return TrainerSettings(**overrides)  # type: ignore[arg-type]
