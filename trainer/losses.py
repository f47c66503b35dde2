"""Masked binary cross-entropy: unknown (blank or U-Ignore) labels contribute nothing to the loss."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F


def masked_bce(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean BCE over the observed entries only; 0 (with a gradient) when a batch has none."""
    per_entry = F.binary_cross_entropy_with_logits(
        logits.float(), targets, reduction="none", pos_weight=pos_weight
    )
    observed = mask.sum()
    return (per_entry * mask).sum() / observed.clamp(min=1.0)


def positive_weights(targets: np.ndarray, mask: np.ndarray, *, cap: float = 10.0) -> np.ndarray:
    """Per-label negatives/positives over observed entries (capped; 1 where a label has no positive)."""
    positives = (targets * mask).sum(axis=0)
    negatives = ((1 - targets) * mask).sum(axis=0)
    ratio = np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0)
    return np.clip(ratio, 1.0 / cap, cap).astype(np.float32)
