"""The regression set: studies a champion got wrong, which no later challenger may get wrong more often.

At each gate the champion's errors on the gate's split (abnormal studies below its threshold, normal ones at
or above it) join the set; a challenger passes only if it makes no more errors on the set's studies present in
the split than the champion does. So a model that fixed an earlier champion's misses cannot be replaced by
one that brings them back, even if its AUROC is as good.

The set is a tag of the registered model (``cxr.regression_set``): salted SHA-256 keys of the studies' paths,
never the paths (which may hold patient identifiers), and at most ``MAX_KEYS`` of them (the newest kept).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
from mlflow.tracking import MlflowClient

from trainer.data.manifest import Manifest

TAG = "cxr.regression_set"
MAX_KEYS = 2000  # 19 characters each in JSON: well within the registry's 100,000-character tag values
_SALT = b"cxr-triage regression set v1:"


def study_keys(manifest: Manifest) -> list[str]:
    return [
        hashlib.sha256(_SALT + f"{e.source}/{e.rel_path}".encode()).hexdigest()[:16]
        for e in manifest.examples
    ]


def errors(scores: np.ndarray, abnormal: np.ndarray, threshold: float) -> np.ndarray:
    """Row mask: a missed abnormal study or a flagged normal one (unknown truth is never an error)."""
    flagged = scores >= threshold
    return ((abnormal == 1) & ~flagged) | ((abnormal == 0) & flagged)


def load(client: MlflowClient, name: str) -> list[str]:
    text = client.get_registered_model(name).tags.get(TAG, "")
    return list(json.loads(text)) if text else []


def save(client: MlflowClient, name: str, keys: list[str]) -> None:
    client.set_registered_model_tag(name, TAG, json.dumps(keys[-MAX_KEYS:], separators=(",", ":")))


def merged(old: list[str], new: list[str]) -> list[str]:
    """``old`` then the keys of ``new`` not in it, order kept (the oldest fall off first at the cap)."""
    seen = set(old)
    return [*old, *(k for k in new if k not in seen)]


@dataclass(frozen=True)
class Check:
    n: int  # studies of the set in this split
    challenger_errors: int
    champion_errors: int

    @property
    def passed(self) -> bool:
        return self.challenger_errors <= self.champion_errors

    def to_dict(self) -> dict[str, int]:
        return {
            "n": self.n,
            "challenger_errors": self.challenger_errors,
            "champion_errors": self.champion_errors,
        }


def check(
    keys: list[str],
    manifest: Manifest,
    *,
    challenger_wrong: np.ndarray,
    champion_wrong: np.ndarray,
) -> Check:
    wanted = set(keys)
    rows = np.array([k in wanted for k in study_keys(manifest)], dtype=bool)
    return Check(int(rows.sum()), int(challenger_wrong[rows].sum()), int(champion_wrong[rows].sum()))
