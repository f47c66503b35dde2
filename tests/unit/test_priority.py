"""The worklist priority formula (cxr_triage.priority)."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_triage.labels import LABELS, NUM_LABELS
from cxr_triage.priority import DEFAULT_WEIGHTS, priorities, priority, weight_vector


def probs(default: float = 0.0, **by_label: float) -> np.ndarray:
    p = np.full(NUM_LABELS, default, dtype=np.float32)
    for name, value in by_label.items():
        p[LABELS.index(name.replace("_", " "))] = value
    return p


def test_high_pneumothorax_outranks_a_normal_study() -> None:
    normal = probs(0.05, No_Finding=0.95)
    pneumothorax = probs(0.05, No_Finding=0.6, Pneumothorax=0.9)
    assert priority(pneumothorax) > priority(normal)
    assert priority(pneumothorax) == pytest.approx(0.9)
    assert priority(normal) == pytest.approx(0.05)


def test_abnormality_term_ranks_when_no_finding_stands_out() -> None:
    assert priority(probs(0.1, No_Finding=0.3)) == pytest.approx(0.7)


def test_weights_discount_less_urgent_findings() -> None:
    cardiomegaly = probs(0.0, No_Finding=1.0, Cardiomegaly=0.9)
    edema = probs(0.0, No_Finding=1.0, Edema=0.9)
    devices = probs(0.0, No_Finding=1.0, Support_Devices=1.0)
    assert priority(cardiomegaly) == pytest.approx(0.72)
    assert priority(edema) == pytest.approx(0.9)
    assert priority(devices) == pytest.approx(0.2)
    assert priority(edema) > priority(cardiomegaly) > priority(devices)


def test_every_finding_but_no_finding_has_a_default_weight() -> None:
    assert set(DEFAULT_WEIGHTS) == set(LABELS) - {"No Finding"}
    assert sorted(name for name, w in DEFAULT_WEIGHTS.items() if w == 1.0) == sorted(
        [
            "Pneumothorax",
            "Edema",
            "Consolidation",
            "Pneumonia",
            "Pleural Effusion",
            "Enlarged Cardiomediastinum",
            "Lung Lesion",
            "Fracture",
        ]
    )


def test_custom_weights_and_clipping() -> None:
    p = probs(0.0, No_Finding=1.0, Fracture=0.9)
    assert priority(p, {"Fracture": 2.0}) == 1.0  # 1.8 clipped
    assert priority(p, {"Pneumothorax": 1.0}) == 0.0  # an unnamed finding weighs 0
    assert priority(probs(0.0, No_Finding=1.2)) == 0.0  # out-of-range input still lands in [0, 1]


def test_batch_matches_single() -> None:
    rng = np.random.default_rng(0)
    batch = rng.random((5, NUM_LABELS)).astype(np.float32)
    assert np.allclose(priorities(batch), [priority(row) for row in batch])
    assert priorities(batch).shape == (5,)


@pytest.mark.parametrize("shape", [(13,), (1, NUM_LABELS), (NUM_LABELS, 1)])
def test_single_rejects_wrong_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="shape"):
        priority(np.zeros(shape))


@pytest.mark.parametrize("shape", [(NUM_LABELS,), (2, 13), (2, 2, NUM_LABELS)])
def test_batch_rejects_wrong_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="shape"):
        priorities(np.zeros(shape))


def test_rejects_nan_and_bad_weights() -> None:
    with pytest.raises(ValueError, match="finite"):
        priority(probs(float("nan")))
    with pytest.raises(ValueError, match="unknown labels"):
        weight_vector({"Pneumothorx": 1.0})
    with pytest.raises(ValueError, match="No Finding"):
        weight_vector({"No Finding": 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        weight_vector({"Edema": -1.0})
