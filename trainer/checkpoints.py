"""What a checkpoint folder holds: model weights, optimizer/scheduler/progress state, and the model spec."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.models import ModelSpec, build_model

MODEL_FILE = "model.pt"
STATE_FILE = "train_state.pt"
SPEC_FILE = "spec.json"


@dataclass
class TrainState:
    epoch: int  # epochs completed
    step: int  # optimizer steps taken
    history: list[dict[str, float]]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save(folder: Path, *, model_state: dict[str, torch.Tensor], state: TrainState, spec: ModelSpec) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model_state, folder / MODEL_FILE)
    torch.save(state.__dict__, folder / STATE_FILE)
    (folder / SPEC_FILE).write_text(json.dumps(spec.to_dict(), indent=2))


def load_state(folder: Path) -> TrainState:
    # Our own files: optimizer state and RNG tuples need full unpickling (weights_only=False).
    return TrainState(**torch.load(folder / STATE_FILE, map_location="cpu", weights_only=False))


def load_spec(folder: Path) -> ModelSpec:
    return ModelSpec.from_dict(json.loads((folder / SPEC_FILE).read_text()))


def load_model(folder: Path) -> tuple[nn.Module, ModelSpec]:
    """The trained network of a checkpoint, rebuilt from its spec, in eval mode."""
    spec = load_spec(folder)
    # Pretrained weights are already inside model.pt: do not require the original weights file again.
    model = build_model(ModelSpec.from_dict({**spec.to_dict(), "weights": None}))
    model.load_state_dict(torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=True))
    return model.eval(), spec
