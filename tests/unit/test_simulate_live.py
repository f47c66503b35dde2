"""The live simulator's parts that need no stack: arrival patterns, truthful verdicts, new studies, summary."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.simulate.live import (
    DIURNAL_PROFILE,
    Ledger,
    LiveStudy,
    arrival_offsets,
    disguised,
    summarise_live,
    verdict_of,
)
from cxr_triage.imaging import decode_grayscale
from cxr_triage.labels import LABELS
from trainer.data.sources import Example


def test_single_and_burst_arrivals_keep_their_gaps() -> None:
    rng = np.random.default_rng(0)
    assert arrival_offsets("single", 4, rng, gap_s=2.5).tolist() == [0.0, 2.5, 5.0, 7.5]
    assert arrival_offsets("burst", 7, rng, gap_s=10.0, burst=3).tolist() == [0, 0, 0, 10, 10, 10, 20]


def test_poisson_arrivals_come_at_the_rate() -> None:
    at = arrival_offsets("poisson", 20_001, np.random.default_rng(1), rate_per_s=4.0)
    gaps = np.diff(at)
    assert at[0] == 0.0 and (gaps >= 0).all()
    assert gaps.mean() == pytest.approx(0.25, rel=0.03)
    assert gaps.std() == pytest.approx(0.25, rel=0.05)  # exponential: sd = mean


def test_diurnal_arrivals_follow_the_days_curve_compressed() -> None:
    n, day_s = 48_000, 240.0
    at = arrival_offsets("diurnal", n, np.random.default_rng(2), day_s=day_s)
    assert (np.diff(at) >= 0).all() and at[0] >= 0.0 and at[-1] <= day_s
    per_hour = np.bincount((at / day_s * 24).astype(int).clip(0, 23), minlength=24)
    expected = n * np.asarray(DIURNAL_PROFILE) / sum(DIURNAL_PROFILE)
    assert per_hour[10] > 4 * per_hour[3]  # the late morning is busy, the small hours are not
    assert np.abs(per_hour - expected).max() < 5 * math.sqrt(expected.max())


def _example(labels: dict[str, float], abnormal: float) -> Example:
    raw = tuple(labels.get(label, math.nan) for label in LABELS)
    return Example(Path("x.png"), "x.png", raw, "p1", "test", "labels.csv:2", abnormal=abnormal)


def test_a_verdict_says_what_the_dataset_says() -> None:
    labels, uncertain = verdict_of(
        _example({"No Finding": 0, "Cardiomegaly": 1, "Edema": -1, "Fracture": 0}, 1)
    )
    assert labels["No Finding"] == 0 and labels["Cardiomegaly"] == 1 and labels["Edema"] == 1
    assert labels["Fracture"] == 0 and labels["Pneumothorax"] == 0  # blank: not reported present
    assert uncertain == ["Edema"] and list(labels) == list(LABELS)

    normal, none = verdict_of(_example({"No Finding": 1, "Support Devices": 1}, 0))
    assert normal["No Finding"] == 1 and normal["Support Devices"] == 1 and none == []
    assert sum(normal.values()) == 2


def test_a_disguised_image_is_a_new_study_that_looks_the_same() -> None:
    pixels = np.random.default_rng(3).integers(0, 256, (64, 64), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="JPEG")
    original = decode_grayscale(buf.getvalue())
    first, second = disguised(buf.getvalue(), 1), disguised(buf.getvalue(), 2**63 - 1)
    assert first != second and first[:8] == b"\x89PNG\r\n\x1a\n"
    a, b = decode_grayscale(first), decode_grayscale(second)
    assert a.shape == original.shape
    assert np.abs(a.astype(int) - original.astype(int)).max() <= 1  # the lowest bit only
    assert (a.reshape(-1)[64:] == original.reshape(-1)[64:]).all()  # and only in the first 64 pixels
    assert (a.reshape(-1)[:64] & 1).tolist() == [1] + [0] * 63
    assert (b.reshape(-1)[:64] & 1).tolist() == [1] * 63 + [0]


def test_the_summary_counts_own_studies_by_truth_and_tier() -> None:
    def study(
        i: int, abnormal: bool, tier: str | None, read_after: float | None, own: bool = True
    ) -> LiveStudy:
        return LiveStudy(
            f"s{i}",
            abnormal,
            {},
            [],
            own=own,
            sent_at=100.0,
            scored_at=100.5 + i / 10,
            tier=tier,
            read_at=None if read_after is None else 100.0 + read_after,
        )

    studies = [
        study(0, True, "critical", 10.0),
        study(1, True, "urgent", 30.0),
        study(2, False, "routine", 60.0),
        study(3, False, "routine", None),  # not read yet
        study(4, True, "critical", 5.0, own=False),  # backlog: not in the figures
    ]
    ledger = Ledger(studies={s.study_id: s for s in studies}, known={}, sent=4, scored=4, read=3)
    summary = summarise_live(ledger, seconds=70.0, settings={"pattern": "single"})
    assert (summary["studies_sent"], summary["studies_scored"], summary["studies_read"]) == (4, 4, 3)
    assert summary["e2e_latency_s"]["n"] == 4 and summary["e2e_latency_s"]["max"] == 0.8
    by_truth = summary["time_to_read_s"]["by_truth"]
    assert by_truth["abnormal"]["n"] == 2 and by_truth["abnormal"]["mean"] == 20.0
    assert by_truth["normal"] == {"n": 1, "mean": 60.0, "p50": 60.0, "p90": 60.0, "p95": 60.0,
                                  "p99": 60.0, "max": 60.0}  # fmt: skip
    assert set(summary["time_to_read_s"]["by_tier"]) == {"critical", "urgent", "routine"}
    assert summary["time_to_read_s"]["by_tier"]["critical"]["n"] == 1
