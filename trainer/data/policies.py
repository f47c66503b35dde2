"""CheXpert uncertainty policies (Irvin et al. 2019): what an uncertain (-1) label becomes for training.

Raw labels are floats: 1 positive, 0 negative, -1 uncertain, NaN blank (the report says nothing). Blanks are
always unknown and masked out of the loss and the metrics; the policy decides only about -1.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np

UNCERTAIN = -1.0
ALLOWED = frozenset({1.0, 0.0, UNCERTAIN})


class UncertaintyPolicy(StrEnum):
    IGNORE = "u-ignore"  # -1 is masked, like a blank
    ONES = "u-ones"  # -1 counts as positive
    ZEROS = "u-zeros"  # -1 counts as negative


def apply_policy(raw: np.ndarray, policy: UncertaintyPolicy) -> tuple[np.ndarray, np.ndarray]:
    """Raw labels [N, L] -> (targets in {0, 1} as float32, mask: 1 where the target counts)."""
    raw = np.asarray(raw, dtype=np.float32)
    known = ~np.isnan(raw)
    uncertain = raw == UNCERTAIN
    targets = np.where(known & (raw == 1.0), 1.0, 0.0).astype(np.float32)
    mask = known.astype(np.float32)
    if policy is UncertaintyPolicy.IGNORE:
        mask[uncertain] = 0.0
    elif policy is UncertaintyPolicy.ONES:
        targets[uncertain] = 1.0
    elif policy is UncertaintyPolicy.ZEROS:
        targets[uncertain] = 0.0
    return targets, mask
