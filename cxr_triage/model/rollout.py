"""Online evaluation of a challenger: the rollout state and the stable study hash that assigns studies to it.

A challenger is served as a second Triton model, ``<model>_challenger`` (``challenger_name``), because a
Triton model's input dims are shared by all its versions and a challenger may take another input size. Its
config's ``parameters`` carry, beside the version's own contract (``cxr_triage.model.contract``), the rollout
state, so that Triton's config is the one place the workers read it from:

- ``cxr.rollout.mode``: ``shadow`` (the challenger scores beside the champion, the champion orders) or
  ``canary`` (a stable fraction of studies is ordered by the challenger);
- ``cxr.rollout.fraction``: in shadow mode the fraction of studies the challenger scores (capacity); in canary
  mode the fraction it orders;
- ``cxr.rollout.challenger`` / ``cxr.rollout.champion``: the registry versions when the rollout started.

No challenger model (the default) means mode ``none``: the worker scores with the champion alone, as before.

Which studies: ``study_bucket`` maps a study id to a number in [0, 1) by SHA-256, the same in every process
and release (Python's ``hash`` is salted per process), so a study never changes arm. A study is in the canary
arm, or in the shadow sample, when its bucket is below the fraction; raising the fraction only adds studies.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal, cast, get_args

from cxr_triage.events import RolloutMode

MODE_KEY: Final = "cxr.rollout.mode"
FRACTION_KEY: Final = "cxr.rollout.fraction"
CHALLENGER_KEY: Final = "cxr.rollout.challenger"
CHAMPION_KEY: Final = "cxr.rollout.champion"
CHALLENGER_SUFFIX: Final = "_challenger"
_BUCKET_BYTES: Final = 8
_MODES: Final = frozenset(get_args(RolloutMode))


class RolloutError(ValueError):
    """Rollout parameters that do not describe a usable rollout."""


def challenger_name(model_name: str) -> str:
    """The Triton model that serves the challenger of ``model_name``."""
    return f"{model_name}{CHALLENGER_SUFFIX}"


def study_bucket(study_id: str) -> float:
    """A study's place in [0, 1): the first 8 bytes of SHA-256 of its id, as a fraction of 2**64."""
    digest = hashlib.sha256(study_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:_BUCKET_BYTES], "big") / float(1 << (8 * _BUCKET_BYTES))


def in_fraction(study_id: str, fraction: float) -> bool:
    """Whether the study falls in the first ``fraction`` of buckets (the canary arm, the shadow sample)."""
    return fraction >= 1.0 or study_bucket(study_id) < fraction


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise RolloutError(f"{FRACTION_KEY} = {text!r} is not a number") from exc
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        raise RolloutError(f"{FRACTION_KEY} = {text!r} is not a fraction in (0, 1]")
    return value


@dataclass(frozen=True)
class RolloutState:
    """What the challenger model's config says; ``NONE`` when there is no challenger."""

    mode: RolloutMode = "none"
    challenger_version: str = ""
    champion_version: str = ""
    fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise RolloutError(f"{MODE_KEY} = {self.mode!r}, expected one of {sorted(_MODES)}")
        if self.mode != "none":
            _fraction(repr(self.fraction))
            if not self.challenger_version:
                raise RolloutError(f"{CHALLENGER_KEY} is missing")

    @property
    def active(self) -> bool:
        return self.mode != "none"

    def scores_with_challenger(self, study_id: str) -> bool:
        """Whether the challenger scores this study: every study in canary mode (both arms are compared on the
        same studies, and the canary arm needs its score to order), the sampled fraction in shadow mode."""
        if self.mode == "canary":
            return True
        return self.mode == "shadow" and in_fraction(study_id, self.fraction)

    def arm(self, study_id: str) -> Literal["champion", "canary"]:
        """Which model's score orders this study."""
        if self.mode == "canary" and in_fraction(study_id, self.fraction):
            return "canary"
        return "champion"

    @classmethod
    def from_mapping(cls, values: Mapping[str, str]) -> RolloutState:
        """From the challenger's Triton config parameters; no mode key means no rollout."""
        mode = values.get(MODE_KEY, "").strip() or "none"
        if mode not in _MODES:
            raise RolloutError(f"{MODE_KEY} = {mode!r}, expected one of {sorted(_MODES)}")
        if mode == "none":
            return NONE
        return cls(
            mode=cast(RolloutMode, mode),
            challenger_version=values.get(CHALLENGER_KEY, "").strip(),
            champion_version=values.get(CHAMPION_KEY, "").strip(),
            fraction=_fraction(values.get(FRACTION_KEY, "1.0").strip()),
        )

    def parameters(self) -> dict[str, str]:
        """The ``cxr.rollout.*`` entries of the challenger's Triton config."""
        return {
            MODE_KEY: self.mode,
            FRACTION_KEY: repr(self.fraction),
            CHALLENGER_KEY: self.challenger_version,
            CHAMPION_KEY: self.champion_version,
        }


NONE: Final = RolloutState()
