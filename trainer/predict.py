"""Batched inference with a torch model (validation each epoch, the driver's final evaluation)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
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


# Test-time augmentation: the full image and a centred zoom, the mild geometry training augments with (no
# flips: laterality is anatomy). The average of their probabilities is scored.
TTA_ZOOMS: tuple[float, ...] = (1.0, 0.9)


@torch.no_grad()
def predict_tta(
    model: nn.Module,
    dataset: CXRDataset,
    *,
    batch_size: int,
    device: torch.device,
    zooms: tuple[float, ...] = TTA_ZOOMS,
) -> np.ndarray:
    """Probabilities [N, 14] averaged over centred zooms of each image (a zoom of 0.9 keeps the central 90%
    of the side, resized back to the input size)."""
    was_training = model.training
    model.eval()
    chunks: list[np.ndarray] = []
    for images, _, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        images = images.to(device)
        size = images.shape[-1]
        views = []
        for zoom in zooms:
            side = max(1, round(size * zoom))
            start = (size - side) // 2
            crop = images[..., start : start + side, start : start + side]
            view = (
                crop
                if side == size
                else F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)
            )
            views.append(torch.sigmoid(model(view).float()))
        chunks.append(torch.stack(views).mean(dim=0).cpu().numpy())
    model.train(was_training)
    return np.concatenate(chunks)
