"""The promotion policy of a challenger under online evaluation, without Kafka: numbers in, a decision out.

Rules, in this order (the first that holds decides):

1. ``rollback`` (canary only): once the canary arm holds ``canary_min_examples`` verdicted studies, its
   sensitivity at its served threshold is below ``canary_sensitivity_floor``, or its scoring latency p95 is
   above ``canary_latency_ceiling_s``: the canary orders real worklists, so it is stopped on its own numbers
   without waiting for a paired comparison.
2. ``promote``: after ``min_paired`` paired verdicted studies, with at least ``min_per_class`` abnormal and
   normal among them, the lower bound of the paired CI of AUROC(challenger) - AUROC(champion) is above
   ``-auroc_margin`` (not worse beyond the margin) and the challenger's sensitivity at its own threshold is at
   least ``sensitivity_floor``.
3. otherwise ``keep_waiting``, with the reason (too few studies, or not shown to be not worse).

Promote and rollback are final: one per challenger, recorded before it is published, and its id hashes
(champion, challenger, action), so a restart republishes the same event rather than a second, different one.
Carrying a decision out (switching Triton, tagging the MLflow version) is another service's job.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel, ConfigDict

from cxr_triage.events import ModelDecisionEventV1, RolloutMode
from stream_processors.paired_metrics import ArmMetrics, PairedMetrics

PolicyAction = Literal["promote", "rollback", "keep_waiting"]


class RolloutPolicy(BaseModel):
    model_config = ConfigDict(frozen=True)

    min_paired: int = 200
    min_per_class: int = 20
    auroc_margin: float = 0.02
    sensitivity_floor: float = 0.80
    canary_min_examples: int = 100
    canary_sensitivity_floor: float = 0.80
    canary_latency_ceiling_s: float = 10.0


class PolicyDecision(BaseModel):
    model_config = ConfigDict(frozen=True)

    action: PolicyAction
    reason: str

    @property
    def final(self) -> bool:
        return self.action != "keep_waiting"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def decide(
    paired: PairedMetrics | None,
    canary: ArmMetrics | None,
    *,
    policy: RolloutPolicy,
) -> PolicyDecision:
    if canary is not None and canary.examples >= policy.canary_min_examples:
        if canary.sensitivity is not None and canary.sensitivity < policy.canary_sensitivity_floor:
            return PolicyDecision(
                action="rollback",
                reason=(
                    f"canary sensitivity {_fmt(canary.sensitivity)} < floor "
                    f"{policy.canary_sensitivity_floor:g} on {canary.examples} canary studies"
                ),
            )
        if canary.latency_p95_s is not None and canary.latency_p95_s > policy.canary_latency_ceiling_s:
            return PolicyDecision(
                action="rollback",
                reason=(
                    f"canary scoring latency p95 {canary.latency_p95_s:.2f} s > ceiling "
                    f"{policy.canary_latency_ceiling_s:g} s on {canary.examples} canary studies"
                ),
            )
    if paired is None or paired.paired < policy.min_paired:
        have = 0 if paired is None else paired.paired
        return PolicyDecision(action="keep_waiting", reason=f"{have} paired studies (< {policy.min_paired})")
    if min(paired.abnormal, paired.normal) < policy.min_per_class:
        return PolicyDecision(
            action="keep_waiting",
            reason=(
                f"{paired.abnormal} abnormal / {paired.normal} normal paired studies"
                f" (< {policy.min_per_class} of each)"
            ),
        )
    low = paired.difference_ci_low
    if low is None or low <= -policy.auroc_margin:
        return PolicyDecision(
            action="keep_waiting",
            reason=(
                f"AUROC difference {_fmt(paired.auroc_difference)} (CI low {_fmt(low)}) not shown to be above"
                f" -{policy.auroc_margin:g}"
            ),
        )
    sensitivity = paired.sensitivity_challenger
    if sensitivity is None or sensitivity < policy.sensitivity_floor:
        return PolicyDecision(
            action="keep_waiting",
            reason=f"challenger sensitivity {_fmt(sensitivity)} < floor {policy.sensitivity_floor:g}",
        )
    return PolicyDecision(
        action="promote",
        reason=(
            f"AUROC difference {_fmt(paired.auroc_difference)} (CI low {_fmt(low)} > -{policy.auroc_margin:g})"
            f", sensitivity {_fmt(sensitivity)} >= {policy.sensitivity_floor:g}"
            f" on {paired.paired} paired studies"
        ),
    )


def decision_id(champion: str, challenger: str, action: str) -> str:
    digest = hashlib.sha256(f"{champion}|{challenger}|{action}".encode()).hexdigest()
    return f"md-{digest[:24]}"


def decision_event(
    decision: PolicyDecision,
    *,
    mode: RolloutMode,
    champion: str,
    challenger: str,
    fraction: float | None = None,
    paired: PairedMetrics | None,
    canary: ArmMetrics | None,
) -> ModelDecisionEventV1:
    metrics: dict[str, float | None] = {} if paired is None else paired.as_metrics()
    if canary is not None:
        for name, value in canary.model_dump(exclude={"model_version", "arm"}).items():
            metrics[f"canary_{name}"] = None if value is None else float(value)
    return ModelDecisionEventV1(
        decision_id=decision_id(champion, challenger, decision.action),
        action=decision.action,
        mode=mode,
        champion_version=champion,
        challenger_version=challenger,
        fraction=fraction,
        reason=decision.reason,
        paired_studies=0 if paired is None else paired.paired,
        metrics=metrics,
        decided_by="policy",
    )
