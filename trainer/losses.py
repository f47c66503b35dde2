"""Multi-label losses, masked: unknown (blank or U-Ignore) labels contribute nothing to the loss.

- ``bce``: binary cross-entropy (optionally with per-label positive weights for the imbalance);
- ``focal``: BCE scaled by (1 - p_t)^gamma, so easy, confidently right entries count less (Lin et al., 2017);
- ``asymmetric``: ASL (Ridnik et al., 2021): negatives are down-weighted harder than positives (gamma_neg >
  gamma_pos) and very easy negatives (p < clip) not at all, for label sets where most entries are negative.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch.nn import functional as F

LossName = Literal["bce", "focal", "asymmetric"]
Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
_EPS = 1e-8


def masked_bce(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean BCE over the observed entries only; 0 (with a gradient) when a batch has none."""
    per_entry = F.binary_cross_entropy_with_logits(
        logits.float(), targets, reduction="none", pos_weight=pos_weight
    )
    return _masked_mean(per_entry, mask)


def _masked_mean(per_entry: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (per_entry * mask).sum() / mask.sum().clamp(min=1.0)


def masked_focal(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    pos_weight: torch.Tensor | None = None,
    *,
    gamma: float = 2.0,
) -> torch.Tensor:
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none", pos_weight=pos_weight)
    p = torch.sigmoid(logits)
    p_true = p * targets + (1 - p) * (1 - targets)
    return _masked_mean((1 - p_true) ** gamma * bce, mask)


def masked_asymmetric(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    pos_weight: torch.Tensor | None = None,
    *,
    gamma_pos: float = 0.0,
    gamma_neg: float = 4.0,
    clip: float = 0.05,
) -> torch.Tensor:
    p = torch.sigmoid(logits.float())
    p_neg = (p - clip).clamp(min=0)  # probability shifting: negatives below ``clip`` give no loss
    positive = targets * (1 - p) ** gamma_pos * torch.log(p.clamp(min=_EPS))
    if pos_weight is not None:
        positive = positive * pos_weight
    negative = (1 - targets) * p_neg**gamma_neg * torch.log((1 - p_neg).clamp(min=_EPS))
    return _masked_mean(-(positive + negative), mask)


def loss_function(name: LossName) -> Loss:
    functions: dict[str, Loss] = {"bce": masked_bce, "focal": masked_focal, "asymmetric": masked_asymmetric}
    return functions[name]


def positive_weights(targets: np.ndarray, mask: np.ndarray, *, cap: float = 10.0) -> np.ndarray:
    """Per-label negatives/positives over observed entries (capped; 1 where a label has no positive)."""
    positives = (targets * mask).sum(axis=0)
    negatives = ((1 - targets) * mask).sum(axis=0)
    ratio = np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0)
    return np.clip(ratio, 1.0 / cap, cap).astype(np.float32)
