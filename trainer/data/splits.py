"""Patient-level splits: every image of a patient lands in the same split.

A source's own split wins (CheXpert's ``valid.csv``, NIH's ``test_list.txt``); otherwise a patient's split is
a hash of the seed and the patient id, so it does not depend on row order and adding patients never moves
existing ones: the validation split of a folder is the same in ``train``, ``evaluate`` and ``promote``.

Three parts: ``train``; ``val``, where a run validates and chooses its temperature and thresholds; ``test``
(``test_fraction``, after ``val``), which no training run sees: the promotion gate's data, so that the
sensitivity it checks was measured where the threshold was not chosen.
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


def assign(manifest: Manifest, *, val_fraction: float, seed: int, test_fraction: float = 0.0) -> list[Split]:
    """The split of each example, in manifest order."""
    if val_fraction + test_fraction >= 1.0:
        raise DataError(
            f"val ({val_fraction}) and test ({test_fraction}) fractions leave nothing to train on"
        )
    result: list[Split] = []
    for example in manifest.examples:
        where = hashed_fraction(example.patient_id, seed)
        if example.split is not None:
            result.append(Split(example.split))
        elif where < val_fraction:
            result.append(Split.VAL)
        elif where < val_fraction + test_fraction:
            result.append(Split.TEST)
        else:
            result.append(Split.TRAIN)
    return result


def split_indices(
    manifest: Manifest, split: Split, *, val_fraction: float, seed: int, test_fraction: float = 0.0
) -> list[int]:
    if split is Split.ALL:
        return list(range(len(manifest)))
    splits = assign(manifest, val_fraction=val_fraction, seed=seed, test_fraction=test_fraction)
    return [i for i, s in enumerate(splits) if s is split]


def select(
    manifest: Manifest, split: Split, *, val_fraction: float, seed: int, test_fraction: float = 0.0
) -> Manifest:
    """The examples of one split; ``DataError`` when it is empty."""
    indices = split_indices(
        manifest, split, val_fraction=val_fraction, seed=seed, test_fraction=test_fraction
    )
    chosen = manifest.subset(indices)
    if not len(chosen):
        raise DataError(f"the {split.value} split is empty")
    return chosen
