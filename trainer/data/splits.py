"""Patient-level splits: every image of a patient lands in the same split.

A source's own split wins (CheXpert's ``valid.csv``, NIH's ``test_list.txt``); otherwise a patient's split is
a hash of the seed and the patient id, so it does not depend on row order and adding patients never moves
existing ones: the validation split of a folder is the same in ``train``, ``evaluate`` and ``promote``.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum

from trainer.data.manifest import Manifest
from trainer.errors import DataError


class Split(StrEnum):
    ALL = "all"
    TRAIN = "train"
    VAL = "val"
    TEST = "test"


def hashed_fraction(patient_id: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(manifest: Manifest, *, val_fraction: float, seed: int) -> list[Split]:
    """The split of each example, in manifest order."""
    result: list[Split] = []
    for example in manifest.examples:
        if example.split is not None:
            result.append(Split(example.split))
        elif hashed_fraction(example.patient_id, seed) < val_fraction:
            result.append(Split.VAL)
        else:
            result.append(Split.TRAIN)
    return result


def split_indices(manifest: Manifest, split: Split, *, val_fraction: float, seed: int) -> list[int]:
    if split is Split.ALL:
        return list(range(len(manifest)))
    splits = assign(manifest, val_fraction=val_fraction, seed=seed)
    return [i for i, s in enumerate(splits) if s is split]


def select(manifest: Manifest, split: Split, *, val_fraction: float, seed: int) -> Manifest:
    """The examples of one split; ``DataError`` when it is empty."""
    chosen = manifest.subset(split_indices(manifest, split, val_fraction=val_fraction, seed=seed))
    if not len(chosen):
        raise DataError(f"the {split.value} split is empty")
    return chosen
