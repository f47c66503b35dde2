"""A model's own contract (cxr_triage.model.contract) and the tier thresholds the trainer chooses (trainer.tiers)."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_triage.labels import LABELS, NUM_LABELS
from cxr_triage.model.contract import ContractError, ModelContract
from cxr_triage.sla import SlaPolicy, Tier
from trainer.tiers import choose_tiers, critical_threshold, urgent_truth


def test_contract_reads_size_and_thresholds_and_writes_them_back() -> None:
    values = {
        "cxr.input_size": "128",
        "cxr.threshold": "0.4",
        "cxr.tier.urgent": "0.4",
        "cxr.tier.critical": "0.85",
    }
    contract = ModelContract.from_mapping(values, version="3")
    assert (contract.input_size, contract.operating_threshold, contract.version) == (128, 0.4, "3")
    assert ModelContract.from_mapping(contract.parameters()) == contract
    tiers = contract.tiers(SlaPolicy())
    assert tiers.source == "model"
    assert [tiers.tier_for(p) for p in (0.39, 0.4, 0.84, 0.85)] == [
        Tier.ROUTINE, Tier.URGENT, Tier.URGENT, Tier.CRITICAL,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "cxr.input_size is 'missing'"),
        ({"cxr.input_size": "big"}, "cxr.input_size is 'big'"),
        ({"cxr.input_size": "64", "cxr.tier.urgent": "1.5"}, "not a threshold in"),
        ({"cxr.input_size": "64", "cxr.threshold": "nan"}, "not a threshold in"),
    ],
)
def test_unreadable_contracts_are_refused(values: dict[str, str], message: str) -> None:
    with pytest.raises(ContractError, match=message):
        ModelContract.from_mapping(values)


def test_missing_or_inconsistent_thresholds_fall_back_to_the_fixed_ones() -> None:
    policy = SlaPolicy(critical_min_priority=0.8, urgent_min_priority=0.5)
    for contract in (
        ModelContract(64),
        ModelContract(64, urgent_threshold=0.3),
        ModelContract(64, urgent_threshold=0.9, critical_threshold=0.6),  # urgent above critical
    ):
        tiers = contract.tiers(policy)
        assert (tiers.urgent, tiers.critical, tiers.source) == (0.5, 0.8, "fallback")


def truth_rows(urgent: list[int]) -> np.ndarray:
    truth = np.zeros((len(urgent), NUM_LABELS))
    truth[:, LABELS.index("Cardiomegaly")] = 1  # abnormal but not urgent (weight 0.8)
    truth[:, LABELS.index("Pneumothorax")] = urgent
    return truth


def test_critical_is_the_lowest_cut_whose_ppv_for_an_urgent_finding_reaches_the_target() -> None:
    score = np.array([0.99, 0.97, 0.95, 0.93, 0.91, 0.90, 0.80, 0.70, 0.60, 0.50])
    urgent = np.array([1, 1, 1, 1, 1, 0, 0, 1, 0, 0], dtype=float)
    # top 5: PPV 1.0; top 6: 5/6 = 0.83; top 7: 5/7 = 0.71; top 8: 6/8 = 0.75
    assert critical_threshold(urgent, score, target_ppv=0.8, floor=0.3) == pytest.approx((0.90 + 0.80) / 2)
    assert critical_threshold(urgent, score, target_ppv=0.75, floor=0.3) == pytest.approx((0.70 + 0.60) / 2)
    assert critical_threshold(urgent, score, target_ppv=0.75, floor=0.75) == pytest.approx((0.90 + 0.80) / 2)
    assert critical_threshold(np.zeros(10), score, target_ppv=0.5, floor=0.3) == 1.0  # never reached


def test_chosen_tiers_put_critical_at_or_above_urgent() -> None:
    rng = np.random.default_rng(0)
    flags = rng.integers(0, 2, 200)
    score = np.clip(0.5 * flags + rng.uniform(0, 0.5, 200), 0, 1)
    truth = truth_rows(list(flags))
    assert np.array_equal(urgent_truth(truth), flags)
    tiers = choose_tiers(score, truth, operating_threshold=0.2, target_ppv=0.9)
    assert tiers.urgent == 0.2 and 0.2 <= tiers.critical < 1.0
    assert tiers.critical_ppv >= 0.9
    assert tiers.metadata() == {"cxr.tier.urgent": "0.2", "cxr.tier.critical": repr(tiers.critical)}
