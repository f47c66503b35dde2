"""Batched inference with a torch model (validation each epoch, the driver's final evaluation)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from trainer.data.dataset import CXRDataset
from trainer.losses import masked_bce


@torch.no_grad()
def predict(
    model: nn.Module, dataset: CXRDataset, *, batch_size: int, device: torch.device
) -> tuple[np.ndarray, float]:
    """(probabilities [N, 14], mean masked BCE) of ``model`` over ``dataset``, in dataset order."""
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    chunks: list[np.ndarray] = []
    loss_sum, observed = 0.0, 0.0
    for images, targets, mask in loader:
        logits = model(images.to(device)).float()
        targets, mask = targets.to(device), mask.to(device)
        loss_sum += float(masked_bce(logits, targets, mask)) * float(mask.sum())
        observed += float(mask.sum())
        chunks.append(torch.sigmoid(logits).cpu().numpy())
    model.train(was_training)
    return np.concatenate(chunks), loss_sum / max(observed, 1.0)
