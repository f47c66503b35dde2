"""Temperature scaling (Guo et al., 2017), one temperature per label, fitted on held-out predictions.

A network trained on a few hundred images is over- or under-confident; dividing each label's logit by a
temperature fitted to minimise the held-out log-loss fixes the scale without changing any label's ranking
(its AUROC). The temperatures are folded into the classifier's last linear layer (``W / T``, ``b / T``), so
the exported graph, its class activation maps and Triton serve calibrated probabilities with no new input,
output or metadata the serving side must interpret; they are recorded in the metadata for people.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch import nn

from trainer.errors import TrainerError

BOUNDS = (0.05, 20.0)  # beyond these a temperature says more about a tiny split than about the model
_EPS = 1e-7


class CalibrationError(TrainerError):
    """The model has no single linear output layer to fold temperatures into."""


def logits_of(probabilities: np.ndarray) -> np.ndarray:
    p = np.clip(probabilities.astype(np.float64), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def _nll(logits: np.ndarray, truth: np.ndarray) -> float:
    """Mean binary log-loss; ``truth`` without NaN."""
    return float(np.mean(np.logaddexp(0, logits) - truth * logits))


def fit_temperatures(probabilities: np.ndarray, truth: np.ndarray, *, min_per_class: int = 3) -> np.ndarray:
    """One temperature per label (1.0 where a label has fewer than ``min_per_class`` of either class)."""
    logits = logits_of(probabilities)
    temperatures = np.ones(probabilities.shape[1])
    for label in range(probabilities.shape[1]):
        known = ~np.isnan(truth[:, label])
        y, z = truth[known, label], logits[known, label]
        if min(int(np.sum(y == 1)), int(np.sum(y == 0))) < min_per_class:
            continue
        best = minimize_scalar(lambda t: _nll(z / t, y), bounds=BOUNDS, method="bounded")  # noqa: B023
        temperatures[label] = float(best.x)
    return temperatures


def apply_temperatures(probabilities: np.ndarray, temperatures: np.ndarray) -> np.ndarray:
    scaled = logits_of(probabilities) / temperatures[None, :]
    return (1 / (1 + np.exp(-scaled))).astype(np.float32)


def expected_calibration_error(scores: np.ndarray, truth: np.ndarray, bins: int = 10) -> float:
    """ECE of a probability against 0/1 truth (NaN truth left out), equal-width bins."""
    known = ~np.isnan(truth)
    s, y = scores[known], truth[known]
    if s.size == 0:
        return math.nan
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(s, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        chosen = which == b
        if chosen.any():
            total += chosen.sum() / s.size * abs(float(s[chosen].mean()) - float(y[chosen].mean()))
    return total


def mean_nll(probabilities: np.ndarray, truth: np.ndarray) -> float:
    """Mean log-loss over the known entries of every label."""
    logits = logits_of(probabilities)
    known = ~np.isnan(truth)
    return _nll(logits[known], truth[known])


def output_layer(model: nn.Module) -> nn.Linear:
    """The Linear layer that produces the logits: ``classifier`` (CNNs) or ``head`` (ViT), last if a Sequential."""
    for name in ("classifier", "head"):
        module = getattr(model, name, None)
        if isinstance(module, nn.Sequential) and len(module):
            module = module[-1]
        if isinstance(module, nn.Linear):
            return module
    raise CalibrationError(f"{type(model).__name__} has no linear classifier or head to calibrate")


@torch.no_grad()
def fold_into_model(model: nn.Module, temperatures: np.ndarray) -> None:
    """Divide the output layer's weights and bias by each label's temperature: logits become logits / T."""
    layer = output_layer(model)
    scale = torch.from_numpy(1.0 / temperatures).to(layer.weight.dtype)
    layer.weight.mul_(scale[:, None])
    if layer.bias is not None:
        layer.bias.mul_(scale)
