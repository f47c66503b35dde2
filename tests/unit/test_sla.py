"""SLA tiers and effective priority (cxr_triage.sla)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from cxr_triage.sla import SlaPolicy, Tier, received_timestamp


def test_default_tiers_and_waits() -> None:
    policy = SlaPolicy()
    assert [policy.tier_for(p) for p in (1.0, 0.8, 0.79, 0.5, 0.49, 0.0)] == [
        Tier.CRITICAL,
        Tier.CRITICAL,
        Tier.URGENT,
        Tier.URGENT,
        Tier.ROUTINE,
        Tier.ROUTINE,
    ]
    assert [policy.max_wait_s(t) for t in Tier] == [1800, 7200, 86400]


def test_a_study_at_its_deadline_outranks_every_fresh_study() -> None:
    policy = SlaPolicy()
    for tier, priority in ((Tier.ROUTINE, 0.0), (Tier.URGENT, 0.5), (Tier.CRITICAL, 0.8)):
        due = policy.effective_priority(priority=priority, tier=tier, waited_s=policy.max_wait_s(tier))
        assert due >= 1.0
        for fresh in (0.0, 0.5, 0.99):
            assert due > policy.effective_priority(priority=fresh, tier=policy.tier_for(fresh), waited_s=0)


def test_index_score_plus_now_over_t_is_the_effective_priority() -> None:
    policy = SlaPolicy()
    received = datetime(2026, 11, 26, 9, 0, tzinfo=UTC).timestamp()
    for now_offset in (0.0, 600.0, 7200.0, 90000.0):
        for priority in (0.1, 0.6, 0.9):
            tier = policy.tier_for(priority)
            score = policy.index_score(priority=priority, tier=tier, received_ts=received)
            effective = policy.effective_priority(priority=priority, tier=tier, waited_s=now_offset)
            assert score + (received + now_offset) / policy.aging_s(tier) == pytest.approx(
                effective, abs=1e-9
            )


def test_every_tier_ages_over_the_horizon_or_its_own_shorter_allowance() -> None:
    assert [SlaPolicy().aging_s(t) for t in Tier] == [1500, 1500, 1500]
    short = SlaPolicy(critical_max_wait_min=15, aging_horizon_min=45)
    assert [short.aging_s(t) for t in Tier] == [900, 2700, 2700]
    assert [SlaPolicy(aging_horizon_min=None).aging_s(t) for t in Tier] == [1800, 7200, 86400]


def test_no_study_is_overtaken_by_one_that_arrived_more_than_the_horizon_later() -> None:
    policy = SlaPolicy()  # every allowance is at least the 25-minute horizon
    horizon_s = 25 * 60.0
    for gap_s, overtakes in ((horizon_s * 0.99, True), (horizon_s * 1.01, False)):
        # The earliest, least urgent study against the most urgent one that came ``gap_s`` later.
        now = gap_s + 60.0
        early = policy.effective_priority(priority=0.0, tier=Tier.ROUTINE, waited_s=now)
        late = policy.effective_priority(priority=1.0, tier=Tier.CRITICAL, waited_s=now - gap_s)
        assert (late > early) is overtakes


def test_policy_from_environment_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_SLA_CRITICAL_MAX_WAIT_MIN", "15")
    monkeypatch.setenv("CXR_SLA_URGENT_MIN_PRIORITY", "0.4")
    policy = SlaPolicy()
    assert policy.max_wait_s(Tier.CRITICAL) == 900 and policy.tier_for(0.45) is Tier.URGENT
    # urgent is [0.4, 0.8) of priority (was asserted through the removed ``priority_band``)
    assert [policy.tier_for(p) for p in (0.39, 0.4, 0.79, 0.8)] == [
        Tier.ROUTINE,
        Tier.URGENT,
        Tier.URGENT,
        Tier.CRITICAL,
    ]
    monkeypatch.setenv("CXR_SLA_AGING_HORIZON_MIN", "none")  # each tier ages over its own allowance
    assert SlaPolicy().aging_s(Tier.ROUTINE) == 86400
    monkeypatch.setenv("CXR_SLA_AGING_HORIZON_MIN", "0")
    with pytest.raises(ValidationError, match="greater than 0"):
        SlaPolicy()
    monkeypatch.delenv("CXR_SLA_AGING_HORIZON_MIN")
    with pytest.raises(ValidationError, match="must be below"):
        SlaPolicy(urgent_min_priority=0.9)
    with pytest.raises(ValidationError):
        SlaPolicy(routine_max_wait_min=0)
    with pytest.raises(ValueError, match="timezone-aware"):
        received_timestamp(datetime(2026, 1, 1))
