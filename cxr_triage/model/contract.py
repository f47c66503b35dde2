"""What a model says about itself: the input size it takes and the thresholds chosen for it at training time.

The facts travel with the model, so no process-wide setting has to agree with the served one:

- in the ONNX file's metadata (``cxr.*`` properties, written at export);
- in the Triton model configuration's ``parameters`` (written by ``cxr_triage.model.repository`` when a
  version is served), where the inference worker reads them together with the input shape, and re-reads
  them whenever Triton answers with another version.

Thresholds are on the worklist priority (``cxr_triage.priority``):

- ``cxr.threshold``: the operating point, the high-sensitivity threshold (sensitivity >= target on
  validation data); a study below it is the model's "normal".
- ``cxr.tier.urgent`` / ``cxr.tier.critical``: the SLA tier bounds. A model without them (the untrained
  initial export, an external file) is filed with ``SlaPolicy``'s fixed fallback thresholds.

``cxr.views`` names the views a model was trained to read (comma-separated; PA, AP, LATERAL, UNKNOWN). A
model that does not state it reads frontal views (PA, AP, and images whose header states none): the worker
stores and shows a lateral but scores it only when the served model lists LATERAL.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from cxr_triage.sla import SlaPolicy, Tier

INPUT_SIZE_KEY: Final = "cxr.input_size"
INPUT_FORMAT_KEY: Final = "cxr.input_format"
INPUT_FORMAT: Final = "uint8-grey-1xSxS"  # the graph scales, normalises and expands channels itself
THRESHOLD_KEY: Final = "cxr.threshold"
URGENT_KEY: Final = "cxr.tier.urgent"
CRITICAL_KEY: Final = "cxr.tier.critical"
VIEWS_KEY: Final = "cxr.views"
FRONTAL_VIEWS: Final = frozenset({"PA", "AP", "UNKNOWN"})
KNOWN_VIEWS: Final = frozenset({"PA", "AP", "LATERAL", "UNKNOWN"})
VERSION_KEY: Final = "cxr.version"  # only in the Triton config: which version the parameters describe


class ContractError(ValueError):
    """Metadata that does not describe a usable model (missing or unreadable input size, bad thresholds)."""


def _views(values: Mapping[str, str]) -> frozenset[str]:
    text = values.get(VIEWS_KEY, "").strip()
    if not text:
        return FRONTAL_VIEWS
    views = frozenset(v.strip().upper() for v in text.split(",") if v.strip())
    if not views or not views <= KNOWN_VIEWS:
        raise ContractError(f"{VIEWS_KEY} = {text!r}: expected some of {', '.join(sorted(KNOWN_VIEWS))}")
    return views


def _threshold(values: Mapping[str, str], key: str) -> float | None:
    text = values.get(key, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError as exc:
        raise ContractError(f"{key} = {text!r} is not a number") from exc
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ContractError(f"{key} = {text!r} is not a threshold in [0, 1]")
    return value


@dataclass(frozen=True)
class TierThresholds:
    """Where the worklist priority of the served model splits into SLA tiers."""

    urgent: float
    critical: float
    source: str  # "model" (chosen at training time) or "fallback" (SlaPolicy's constants)

    def tier_for(self, priority: float) -> Tier:
        if priority >= self.critical:
            return Tier.CRITICAL
        if priority >= self.urgent:
            return Tier.URGENT
        return Tier.ROUTINE


@dataclass(frozen=True)
class ModelContract:
    input_size: int
    operating_threshold: float | None = None
    urgent_threshold: float | None = None
    critical_threshold: float | None = None
    version: str = ""
    views: frozenset[str] = FRONTAL_VIEWS

    @classmethod
    def from_mapping(cls, values: Mapping[str, str], *, version: str = "") -> ModelContract:
        """From ONNX metadata or Triton config parameters (the same ``cxr.*`` keys)."""
        text = values.get(INPUT_SIZE_KEY, "").strip()
        if not text.isdigit() or int(text) <= 0:
            raise ContractError(f"{INPUT_SIZE_KEY} is {text or 'missing'!r}, expected a positive integer")
        return cls(
            input_size=int(text),
            operating_threshold=_threshold(values, THRESHOLD_KEY),
            urgent_threshold=_threshold(values, URGENT_KEY),
            critical_threshold=_threshold(values, CRITICAL_KEY),
            version=version or values.get(VERSION_KEY, ""),
            views=_views(values),
        )

    def reads(self, view: str) -> bool:
        """Whether the model was trained on images of ``view`` (it scores only those)."""
        return view in self.views

    def tiers(self, fallback: SlaPolicy) -> TierThresholds:
        """The model's tier thresholds when it has a consistent pair, else the fixed fallback."""
        urgent, critical = self.urgent_threshold, self.critical_threshold
        if urgent is not None and critical is not None and 0.0 < urgent <= critical:
            return TierThresholds(urgent=urgent, critical=critical, source="model")
        return TierThresholds(
            urgent=fallback.urgent_min_priority, critical=fallback.critical_min_priority, source="fallback"
        )

    def parameters(self) -> dict[str, str]:
        """The ``cxr.*`` entries written into the Triton config of the served version."""
        values = {INPUT_SIZE_KEY: str(self.input_size), VERSION_KEY: self.version}
        for key, value in (
            (THRESHOLD_KEY, self.operating_threshold),
            (URGENT_KEY, self.urgent_threshold),
            (CRITICAL_KEY, self.critical_threshold),
        ):
            if value is not None:
                values[key] = repr(value)
        if self.views != FRONTAL_VIEWS:
            values[VIEWS_KEY] = ",".join(sorted(self.views))
        return values
