"""Service-level tiers of the worklist and the effective priority that ages waiting studies.

Every scored study gets a tier from its model priority, by the thresholds of the model that scored it
(``cxr_triage.model.contract``; for a model that states none, ``critical`` ≥ 0.8, ``urgent`` ≥ 0.5, else
``routine``, configurable here), stored with the study; each tier has a maximum wait ``T`` (30 min, 2 h,
24 h by default).
The worklist is read in order of the *effective priority*

    e(t) = priority + waited(t) / A_tier        (waited = t - received_at)

where the aging time ``A_tier = min(T_tier, H)``: the tier's allowance, at most the aging horizon ``H``
(25 min by default). Why:

* ``priority`` is in [0, 1], so a study that has waited ``A_tier`` (at most its whole allowance) has
  ``e ≥ 1``: it ranks above every study that has waited less than ``(1 - p')`` of its own aging time (in
  particular above every fresh study), so a study near its deadline is never overtaken by new arrivals,
  however urgent they look.
* The horizon bounds what triage costs the studies it puts back: with every tier's allowance at least ``H``
  (the defaults), all studies age at ``1/H``, and a study B overtakes an earlier study A only if
  ``p_B - p_A > (B's arrival - A's arrival) / H``, so **no study is ever overtaken by one that arrived more
  than H later**. Without it a routine study would age at 1/24 h and wait out every abnormal-looking arrival
  of a busy shift: in the reading-shift simulation (``cxr-triage simulate report``, docs/business-case.md)
  the longest wait rose by 150-350 % over FIFO with the tier allowances alone, by 21-25 % with
  H = 25 min on every model of the report's AUROC curve (+28-31 % with 30 min, +15-19 % with 20 min).
* A tier whose allowance is below the horizon ages faster (``1/T``), so it keeps its own promise.
* Nothing starves: every waiting study's ``e`` grows without bound, so it eventually outranks any study.

The guarantee is conditional on capacity, as any schedule's is: when the studies waiting at a moment can be
read before their deadlines by the radiologists at hand, they are; under sustained overload no order can keep
every deadline, and this one spreads the lateness in proportion to each tier's allowance instead of starving
the routine tier.

Storage (see ``cxr_triage.worklist``) needs claims in O(log n): within one tier ``T`` is the same for
every study, so ``e(t) = (priority - received_ts/T) + t/T``: the first term is a time-invariant score that
orders the tier's sorted set once and for all; the best study overall is the best of the tier heads after
adding each tier's ``t/T``. The Lua scripts there are the definition of the order (``effective`` in
``cxr_triage/worklist/lua/prelude.lua``); Python computes the score they are given (``index_score``) and
the effective priority only where no script answers (one study's detail).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Final, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Tier(StrEnum):
    CRITICAL = "critical"
    URGENT = "urgent"
    ROUTINE = "routine"


TIERS: Final[tuple[Tier, ...]] = (Tier.CRITICAL, Tier.URGENT, Tier.ROUTINE)


class SlaPolicy(BaseSettings):
    """Tier thresholds (model priority) and maximum waits (minutes); env ``CXR_SLA_*``.

    The worker (which files studies into tiers) and the API (which reads them) must share these values.
    """

    model_config = SettingsConfigDict(
        env_prefix="CXR_SLA_", env_file=".env", extra="ignore", frozen=True, env_parse_none_str="none"
    )

    critical_min_priority: float = Field(default=0.8, gt=0.0, le=1.0)
    urgent_min_priority: float = Field(default=0.5, gt=0.0, le=1.0)
    critical_max_wait_min: float = Field(default=30.0, gt=0.0, le=7 * 24 * 60)
    urgent_max_wait_min: float = Field(default=120.0, gt=0.0, le=7 * 24 * 60)
    routine_max_wait_min: float = Field(default=24 * 60.0, gt=0.0, le=7 * 24 * 60)
    # None: each tier ages over its whole allowance (a routine study barely ages within a shift).
    aging_horizon_min: float | None = Field(default=25.0, gt=0.0, le=7 * 24 * 60)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.urgent_min_priority >= self.critical_min_priority:
            raise ValueError(
                f"CXR_SLA_URGENT_MIN_PRIORITY ({self.urgent_min_priority}) must be below "
                f"CXR_SLA_CRITICAL_MIN_PRIORITY ({self.critical_min_priority})"
            )
        return self

    def tier_for(self, priority: float) -> Tier:
        """The fallback tier (these thresholds); a study's own tier is the one stored with it."""
        if priority >= self.critical_min_priority:
            return Tier.CRITICAL
        if priority >= self.urgent_min_priority:
            return Tier.URGENT
        return Tier.ROUTINE

    def max_wait_s(self, tier: Tier) -> float:
        minutes = {
            Tier.CRITICAL: self.critical_max_wait_min,
            Tier.URGENT: self.urgent_max_wait_min,
            Tier.ROUTINE: self.routine_max_wait_min,
        }[tier]
        return minutes * 60.0

    def aging_s(self, tier: Tier) -> float:
        """Seconds for a study of ``tier`` to gain 1 of effective priority: its allowance, at most the horizon."""
        allowance = self.max_wait_s(tier)
        return allowance if self.aging_horizon_min is None else min(allowance, self.aging_horizon_min * 60.0)

    def index_score(self, *, priority: float, tier: Tier, received_ts: float) -> float:
        """The time-invariant sort key of a study inside its tier's sorted set (what the index script stores)."""
        return priority - received_ts / self.aging_s(tier)

    def effective_priority(self, *, priority: float, tier: Tier, waited_s: float) -> float:
        """``effective`` of lua/prelude.lua (the definition), for a study no script reply covers."""
        return priority + max(waited_s, 0.0) / self.aging_s(tier)


def received_timestamp(received_at: datetime) -> float:
    """Seconds since the epoch of an aware timestamp (what the index scores are built from)."""
    if received_at.tzinfo is None:
        raise ValueError("received_at must be timezone-aware")
    return received_at.timestamp()
