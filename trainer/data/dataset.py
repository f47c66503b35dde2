"""The torch dataset: image bytes -> ``decode_grayscale`` -> (augmentation) -> ``resize_gray`` -> ``normalise``.

Decoding and preprocessing are ``cxr_triage.imaging``'s, the same calls the inference worker makes, so a
trained model sees at serving time exactly the tensors it was evaluated on.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from cxr_triage.imaging import ImageRejected, decode_grayscale, normalise, resize_gray
from trainer.data.augment import AugmentConfig, augment_grayscale
from trainer.data.manifest import Manifest
from trainer.data.policies import UncertaintyPolicy
from trainer.errors import BadRow, BadRowsError


class CXRDataset(Dataset[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """Items are (image [3, S, S] float32, targets [14], mask [14]); with ``augment``, seeded per epoch."""

    def __init__(
        self,
        manifest: Manifest,
        *,
        size: int,
        policy: UncertaintyPolicy,
        augment: AugmentConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.manifest = manifest
        self.size = size
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        targets, mask = manifest.targets(policy)
        self.targets = torch.from_numpy(targets)
        self.mask = torch.from_numpy(mask)

    def __len__(self) -> int:
        return len(self.manifest)

    def set_epoch(self, epoch: int) -> None:
        """New augmentations each epoch, the same ones for the same (seed, epoch, index) on any worker."""
        self.epoch = epoch

    def image(self, index: int) -> np.ndarray:
        """The network's input: [3, S, S] float32, normalised as the exported graph normalises."""
        return normalise(self.pixels(index))

    def pixels(self, index: int) -> np.ndarray:
        """What a served model receives: [1, S, S] uint8 greyscale (after augmentation, if any)."""
        example = self.manifest.examples[index]
        try:
            gray = decode_grayscale(example.path.read_bytes())
        except ImageRejected as exc:
            # Checked before training (Verify.DECODE); a file changed since then still names its row.
            raise BadRowsError([BadRow(example.where, example.rel_path, exc.reason)]) from exc
        except OSError as exc:
            raise BadRowsError([BadRow(example.where, example.rel_path, f"errno {exc.errno}")]) from exc
        if self.augment is not None:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            gray = augment_grayscale(gray, rng, self.augment)
        return resize_gray(gray, self.size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.image(index)), self.targets[index], self.mask[index]
