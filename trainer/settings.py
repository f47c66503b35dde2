"""Trainer settings: the stack's ``Settings`` plus MLflow, Ray and gate fields (env prefix ``CXR_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

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
    # A challenger must rank abnormal above normal studies better than this on the gate's split, even with no
    # champion to beat (an untrained network can reach the sensitivity target with a threshold near 0).
    gate_min_auroc_abnormal: float = Field(default=0.5, ge=0.0, lt=1.0)
    # The fixed evaluation split of the gate: a CheXpert-layout folder and which of its splits to score.
    eval_data: Path = DEFAULT_DATA
    eval_split: Literal["all", "train", "val", "test"] = "test"
    split_seed: int = 20240601
    val_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    # Patients no training run sees (trainer.data.splits): the gate's split of a folder without its own.
    test_fraction: float = Field(default=0.15, ge=0.0, lt=1.0)
    # The sensitivity a run chooses its threshold for on its validation split: above the target, so that
    # the target still holds on the test split the gate checks (cross-validation measures the drop).
    threshold_sensitivity: float = Field(default=0.97, gt=0.0, le=1.0)

    # The retrain worker (`cxr-triage retrain-worker`, trainer/retrain*.py): its consumer group, the data it
    # trains on, and bounds that keep one retraining within minutes on a CPU box.
    retrain_group: str = "cxr-retrain"
    # A CheXpert-layout folder trained on beside the feedback (its val split then picks the threshold);
    # unset: feedback only.
    retrain_public_data: Path | None = None
    # Share of feedback studies never trained on and never used to choose a threshold: the gate's data.
    retrain_heldout_fraction: float = Field(default=0.3, gt=0.0, lt=1.0)
    # Below these the held-out slice cannot decide and the challenger is rejected (never promoted blind).
    retrain_min_heldout: int = Field(default=20, ge=1)
    retrain_min_heldout_per_class: int = Field(default=5, ge=1)
    # "all": every training-slice example up to the request's up_to_seq (the champion's feedback too);
    # "request": only the request's window (after_seq, up_to_seq].
    retrain_feedback_window: Literal["all", "request"] = "all"
    retrain_architecture: str = "densenet121"
    # Unset: the champion's input size (its `cxr.input_size` tag), else the initial model's.
    retrain_input_size: int | None = Field(default=None, ge=32, le=1024)
    retrain_epochs: int = Field(default=2, ge=1)
    retrain_max_steps: int | None = Field(default=50, ge=1)
    retrain_batch_size: int = Field(default=8, ge=1)
    retrain_workers: int = Field(default=2, ge=0)
    retrain_lr: float = Field(default=1e-4, gt=0)
    retrain_max_minutes: float | None = Field(default=30.0, gt=0)

    # The rollout worker (`cxr-triage rollout-worker`, trainer/rollout*.py): its consumer group on
    # cxr.model-decisions.v1 (its metrics port is the shared `rollout_metrics_port`).
    rollout_group: str = "cxr-rollout"
    # Pause before a decision is read again after MLflow or Kafka failed while carrying it out.
    rollout_retry_s: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _something_to_train_on(self) -> TrainerSettings:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction leave no patient to train on")
        return self

    def split_fractions(self) -> dict[str, Any]:
        """Keyword arguments of ``trainer.data.splits.select`` / ``assign`` for this deployment."""
        return {
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "seed": self.split_seed,
        }

    @property
    def ray_dir(self) -> Path:
        return self.ray_tmpdir or self.home / "ray"

    @property
    def checkpoints_dir(self) -> Path:
        return self.home / "checkpoints"

    @property
    def rollout_ledger_path(self) -> Path:
        """The decisions the rollout worker started and carried out (``trainer.rollout_ledger``)."""
        return self.home / "rollout" / "decisions.json"


def load_trainer_settings(**overrides: object) -> TrainerSettings:
    return TrainerSettings(**overrides)  # type: ignore[arg-type]
