"""The promotion gate: a challenger replaces the champion only if it is not worse and stays sensitive enough.

    challenger macro AUROC >= champion macro AUROC - margin   (margin 0.005; no champion: passes)
    challenger sensitivity at its own threshold >= target    (0.95)

both on the same fixed evaluation split. A metric that cannot be computed (NaN) fails the gate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reasons: tuple[str, ...]


def decide(
    *,
    challenger_auroc: float,
    challenger_sensitivity: float,
    champion_auroc: float | None,
    margin: float,
    target_sensitivity: float,
) -> GateResult:
    reasons: list[str] = []
    if math.isnan(challenger_auroc):
        reasons.append("challenger macro AUROC is undefined on the evaluation split")
    elif champion_auroc is not None and not math.isnan(champion_auroc):
        floor = champion_auroc - margin
        if challenger_auroc < floor:
            reasons.append(
                f"macro AUROC {challenger_auroc:.4f} < champion {champion_auroc:.4f} - {margin} = {floor:.4f}"
            )
    if math.isnan(challenger_sensitivity):
        reasons.append("sensitivity is undefined (no abnormal studies in the evaluation split)")
    elif challenger_sensitivity < target_sensitivity:
        reasons.append(f"sensitivity {challenger_sensitivity:.4f} < target {target_sensitivity}")
    return GateResult(passed=not reasons, reasons=tuple(reasons))
