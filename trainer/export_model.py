"""From a trained network to the served ONNX file, and the parity check that the file computes the same.

The export itself is the inference service's (``cxr_triage.model.export.export_model``: probabilities plus
class activation maps); the trainer adds only metadata (threshold, run id), so tracked and served graphs are one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from cxr_triage.imaging import normalise
from cxr_triage.model.export import INPUT_NAME, OUTPUT_NAME, export_model, read_metadata
from trainer.errors import TrainerError

logger = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4


class ParityError(TrainerError):
    """The exported graph does not compute what the PyTorch model computes."""


@dataclass(frozen=True)
class Exported:
    path: Path
    metadata: dict[str, str]
    seconds: float


def export_trained(
    model: nn.Module, path: Path, *, input_size: int, architecture: str, metadata: dict[str, str]
) -> Exported:
    """Export through the serving side's ``export_model`` (probabilities and class activation maps)."""
    started = time.perf_counter()
    export_model(
        model,
        path,
        input_size=input_size,
        metadata={"cxr.weights": "trained", "cxr.architecture": architecture, **metadata},
    )
    return Exported(path, read_metadata(path), time.perf_counter() - started)


def session(path: Path, threads: int = 2) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def onnx_probabilities(sess: ort.InferenceSession, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Probabilities of uint8 [N, 1, S, S] pixels (the served graph normalises them itself)."""
    outputs = [
        sess.run([OUTPUT_NAME], {INPUT_NAME: images[i : i + batch_size]})[0]
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(outputs).astype(np.float32)


def parity(model: nn.Module, path: Path, images: np.ndarray) -> float:
    """Max |ONNX Runtime - PyTorch| over the probabilities of uint8 ``images`` (real pixels); raises above 1e-4.

    PyTorch gets them through ``cxr_triage.imaging.normalise``, as in training; ONNX Runtime gets the pixels,
    as Triton does, so the check covers the graph's own normalisation too.
    """
    with torch.no_grad():
        expected = torch.sigmoid(model.eval()(torch.from_numpy(normalise(images)))).numpy()
    got = onnx_probabilities(session(path), images)
    diff = float(np.abs(got - expected).max())
    if diff > PARITY_TOLERANCE:
        raise ParityError(f"ONNX output differs from PyTorch by {diff:.2e} (> {PARITY_TOLERANCE:.0e})")
    return diff
