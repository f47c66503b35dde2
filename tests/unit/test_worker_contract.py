"""The worker follows the served model's own contract: its input size and its tier thresholds (fakes only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxr_triage import topics
from cxr_triage.labels import LABELS, NUM_LABELS
from cxr_triage.model.contract import ModelContract
from cxr_triage.sla import Tier
from tests.unit.worker_rig import SIZE, Rig, study_message


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def row(no_finding: float, other: float = 0.1) -> np.ndarray:
    values = np.full(NUM_LABELS, other, dtype=np.float32)
    values[LABELS.index("No Finding")] = no_finding
    return values


def predictions(rig: Rig) -> dict[str, object]:
    return {m.event.study_id: m.event for m in rig.publisher.of(topics.PREDICTIONS)}  # type: ignore[attr-defined]


def test_tiers_come_from_the_served_models_thresholds(rig: Rig) -> None:
    rig.scorer.served = ModelContract(SIZE, 0.3, urgent_threshold=0.3, critical_threshold=0.6, version="1")
    rig.scorer.rows = {0: row(0.95, 0.05), 1: row(0.55), 2: row(0.1)}  # priorities 0.05, 0.45, 0.9
    ids = ["S-low", "S-mid", "S-high"]
    rig.worker([study_message(rig.store, s, i) for i, s in enumerate(ids)]).step()
    by_id = predictions(rig)
    assert [by_id[s].tier for s in ids] == [Tier.ROUTINE, Tier.URGENT, Tier.CRITICAL]  # type: ignore[attr-defined]
    assert [e.tier for e in rig.worklist.entries] == [Tier.ROUTINE, Tier.URGENT, Tier.CRITICAL]
    # The operating threshold travels with each prediction: online sensitivity is measured at it.
    assert {by_id[s].threshold for s in ids} == {0.3}  # type: ignore[attr-defined]


def test_a_model_without_thresholds_is_filed_by_the_fixed_fallback(rig: Rig) -> None:
    rig.scorer.rows = {0: row(0.55)}  # priority 0.45: urgent for the model above, routine below 0.5
    rig.worker([study_message(rig.store, "S-mid", 0)]).step()
    assert predictions(rig)["S-mid"].tier is Tier.ROUTINE  # type: ignore[attr-defined]
    assert predictions(rig)["S-mid"].threshold is None  # type: ignore[attr-defined]


def test_a_new_input_size_mid_stream_is_read_from_triton_and_nothing_is_lost(rig: Rig) -> None:
    worker = rig.worker([study_message(rig.store, f"S-{i}", i) for i in range(4)], max_batch=2)
    assert worker.step() is not None and rig.scorer.contracts_read == 1
    # Version 2 takes 48 px images: Triton refuses the next request shaped for version 1.
    rig.scorer.served = ModelContract(48, urgent_threshold=0.2, critical_threshold=0.95, version="2")
    assert worker.step() is None  # refused, not committed, rewound
    report = None
    while report is None:
        report = worker.step()
    assert rig.scorer.contracts_read == 2
    assert rig.scorer.shapes[-1] == (2, 1, 48, 48)
    by_id = predictions(rig)
    assert sorted(by_id) == ["S-0", "S-1", "S-2", "S-3"]
    assert [by_id[f"S-{i}"].model_version for i in range(4)] == ["1", "1", "2", "2"]  # type: ignore[attr-defined]
    assert by_id["S-3"].tier is Tier.URGENT  # type: ignore[attr-defined]  # priority 0.9 < 0.95: version 2's tiers


def test_a_version_with_the_same_size_but_new_thresholds_files_by_its_own(rig: Rig) -> None:
    rig.scorer.rows = {0: row(0.1)}  # priority 0.9
    worker = rig.worker([study_message(rig.store, "S-a", 0), study_message(rig.store, "S-b", 1)], max_batch=1)
    worker.step()
    rig.scorer.served = ModelContract(SIZE, urgent_threshold=0.5, critical_threshold=0.95, version="2")
    assert worker.step() is not None  # answered by version 2: its contract is read, no second Triton call
    by_id = predictions(rig)
    assert by_id["S-a"].tier is Tier.CRITICAL and by_id["S-b"].tier is Tier.URGENT  # type: ignore[attr-defined]
    assert rig.journal.count("triton:1") == 2
