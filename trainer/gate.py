"""The promotion gate: a challenger replaces the champion only if it is not worse and stays sensitive enough.

    challenger macro AUROC >= champion macro AUROC - margin   (margin 0.005; no champion: passes)
    challenger abnormal AUROC > floor                         (0.5: ranks better than chance, champion or not)
    challenger sensitivity at its own threshold >= target    (0.95)
    challenger errors on the regression set <= champion's    (trainer.regression)

all on the same fixed evaluation split, which is not where the challenger's threshold was chosen (the test
split of a folder, or the held-out feedback slice), so the sensitivity check can fail. A metric that cannot
be computed (NaN) fails the gate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from trainer.regression import Check


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
    challenger_auroc_abnormal: float | None = None,
    min_auroc_abnormal: float = 0.0,
    regression: Check | None = None,
) -> GateResult:
    reasons: list[str] = []
    if regression is not None and not regression.passed:
        reasons.append(
            f"regression set: {regression.challenger_errors} errors on {regression.n} studies earlier "
            f"champions got wrong, the champion makes {regression.champion_errors}"
        )
    if challenger_auroc_abnormal is not None and min_auroc_abnormal > 0:
        if math.isnan(challenger_auroc_abnormal):
            reasons.append(
                "abnormal AUROC is undefined (the evaluation split lacks normal or abnormal studies)"
            )
        elif challenger_auroc_abnormal <= min_auroc_abnormal:
            reasons.append(f"abnormal AUROC {challenger_auroc_abnormal:.4f} <= floor {min_auroc_abnormal}")
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
