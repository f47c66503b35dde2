"""Drift: hand-checked PSI, the min-window rule, and the required behaviour on real and synthetic images.

The public sample set is read from ../shared/datasets/cxr-public (on every machine this runs on); a test that
needs it fails with a message when it is missing. Tests about the rules themselves use synthetic
chest-film-like images, which need no data.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cxr_triage.events import DriftReportV1, DriftScore
from stream_processors.drift import (
    DriftThresholds,
    InputSample,
    categorical_psi,
    drift_report,
    input_sample,
    psi,
    quantile_psi,
)
from stream_processors.drift_measure import LabelledImage, halves, load_folder, summarise

PUBLIC = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "cxr-public"


def film(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A crude frontal film: bright body, two dark lung fields, a black border strip, exposure and noise."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    body = np.full((size, size), 170.0)
    for cx in (0.3, 0.7):
        lung = ((xx - cx) / 0.17) ** 2 + ((yy - 0.5) / 0.32) ** 2 < 1.0
        body[lung] = 60.0
    body[:, : size // 10] = 5.0
    exposure = rng.normal(1.0, 0.08)
    return np.clip(body * exposure + rng.normal(0.0, 12.0, body.shape), 0, 255).astype(np.uint8)


def films(seed: int, n: int, transform: str = "none") -> list[InputSample]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        pixels = film(rng)
        if transform == "inverted":
            pixels = 255 - pixels
        elif transform == "dark":
            pixels = (pixels * 0.2).astype(np.uint8)
        out.append(input_sample(pixels, view="PA", source="site-a"))
    return out


def priorities(seed: int, n: int, a: float = 2.0, b: float = 2.0) -> list[float]:
    return np.random.default_rng(seed).beta(a, b, n).tolist()


def report(
    reference: list[InputSample],
    window: list[InputSample],
    *,
    ref_p: list[float] | None = None,
    win_p: list[float] | None = None,
    thresholds: DriftThresholds | None = None,
) -> DriftReportV1:
    return drift_report(
        reference,
        window,
        reference_priorities=priorities(1, len(reference)) if ref_p is None else ref_p,
        window_priorities=priorities(2, len(window)) if win_p is None else win_p,
        model_version="7",
        thresholds=thresholds,
    )


def by_feature(r: DriftReportV1) -> dict[str, DriftScore]:
    return {s.feature: s for s in r.scores}


def flagged(r: DriftReportV1) -> set[str]:
    return {s.feature for s in r.scores if s.flagged}


# --- the summary of one image -------------------------------------------------------------------------------


def test_input_sample_is_hand_checkable_and_serialisable() -> None:
    pixels = np.array([[0, 0, 16, 255], [31, 32, 128, 255]], dtype=np.uint8)
    s = input_sample(pixels, view="AP", source="ward-3")
    expected = [0.0] * 16
    # bins of 16 grey levels: {0, 0} {16, 31} {32} {128} {255, 255}
    expected[0], expected[1], expected[2], expected[8], expected[15] = 2 / 8, 2 / 8, 1 / 8, 1 / 8, 2 / 8
    assert s.histogram == pytest.approx(expected)
    assert s.mean_intensity == pytest.approx((16 + 255 + 31 + 32 + 128 + 255) / 8)
    assert s.dark_fraction == pytest.approx(4 / 8)  # 0, 0, 16, 31 are below 32
    assert (s.width, s.height, s.view, s.source) == (4, 2, "AP", "ward-3")
    assert InputSample.model_validate_json(s.model_dump_json()) == s


@pytest.mark.parametrize("shape", [(8,), (4, 4, 3), (0, 5)])
def test_input_sample_refuses_anything_but_a_greyscale_image(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="2-D greyscale"):
        input_sample(np.zeros(shape, dtype=np.uint8))


# --- PSI on paper ---------------------------------------------------------------------------------------------


def test_psi_by_hand() -> None:
    # (0.25 - 0.5) ln(0.25/0.5) + (0.75 - 0.5) ln(0.75/0.5) = 0.25 ln 2 + 0.25 ln 1.5 = 0.25 ln 3
    assert psi(np.array([0.5, 0.5]), np.array([0.25, 0.75]), 1e-4) == pytest.approx(0.25 * math.log(3))
    assert psi(np.array([0.2, 0.8]), np.array([0.2, 0.8]), 1e-4) == 0.0


def test_new_category_costs_its_share_times_log_over_epsilon() -> None:
    # reference all "a"; window half "a", half "new": (0.5-1) ln 0.5 + (0.5-1e-4) ln(0.5/1e-4)
    value = categorical_psi(["a"] * 10, ["a"] * 5 + ["new"] * 5, 1e-4)
    assert value == pytest.approx(-0.5 * math.log(0.5) + (0.5 - 1e-4) * math.log(0.5 / 1e-4))


def test_constant_reference_sees_a_changed_constant() -> None:
    same = quantile_psi(np.full(50, 320.0), np.full(50, 320.0), 5, 1e-4)
    moved = quantile_psi(np.full(50, 320.0), np.full(50, 1024.0), 5, 1e-4)
    assert same == 0.0
    assert moved == pytest.approx(2 * (1 - 1e-4) * math.log(1 / 1e-4))


# --- the rules of the report ----------------------------------------------------------------------------------


def test_same_population_does_not_alarm_and_every_feature_is_scored() -> None:
    r = report(films(1, 150), films(2, 150))
    assert (r.reference_size, r.window_size, r.model_version) == (150, 150, "7")
    assert [s.feature for s in r.scores] == ["intensity", "size", "view", "source", "prediction"]
    assert not r.alert, r.scores
    assert by_feature(r)["view"].ks_statistic is None  # no order: PSI only


@pytest.mark.parametrize("transform", ["inverted", "dark"])
def test_synthetic_inverted_or_dark_window_trips_intensity(transform: str) -> None:
    r = report(films(1, 150), films(2, 150, transform))
    assert r.alert
    assert flagged(r) == {"intensity"}


def test_below_min_window_scores_are_reported_but_nothing_flags() -> None:
    limits = DriftThresholds()
    small = films(2, limits.min_window - 1, "dark")
    r = report(films(1, 150), small)
    assert not r.alert and not flagged(r)
    assert by_feature(r)["intensity"].psi is not None and by_feature(r)["intensity"].psi > limits.psi
    at_limit = report(films(1, 150), films(2, limits.min_window, "dark"))
    assert at_limit.alert and "intensity" in flagged(at_limit)


def test_prediction_feature_needs_priorities_on_both_sides_and_its_own_min_window() -> None:
    r = report(films(1, 150), films(2, 150), ref_p=[], win_p=priorities(2, 150))
    assert "prediction" not in by_feature(r)
    shifted = report(
        films(1, 150), films(2, 150), ref_p=priorities(1, 150, 2, 5), win_p=priorities(2, 150, 5, 2)
    )
    assert flagged(shifted) == {"prediction"}
    few = report(films(1, 150), films(2, 150), ref_p=priorities(1, 150, 2, 5), win_p=priorities(2, 20, 5, 2))
    assert not few.alert


def test_no_samples_on_one_side_reports_no_input_feature() -> None:
    r = report([], films(2, 150), ref_p=priorities(1, 150), win_p=priorities(2, 150))
    assert [s.feature for s in r.scores] == ["prediction"]
    assert not r.alert


def test_size_change_flags_size() -> None:
    rng = np.random.default_rng(3)
    big = [input_sample(np.kron(film(rng), np.ones((2, 2), dtype=np.uint8)), view="PA", source="site-a")
           for _ in range(120)]  # fmt: skip
    r = report(films(1, 150), big)
    assert "size" in flagged(r)
    assert by_feature(r)["size"].ks_statistic == 1.0


def test_non_finite_priorities_are_refused() -> None:
    with pytest.raises(ValueError, match="window priorities"):
        report(films(1, 5), films(2, 5), win_p=[0.5, float("nan")])


def test_report_round_trips_as_json() -> None:
    r = report(films(1, 120), films(2, 120, "inverted"))
    assert DriftReportV1.from_bytes(r.to_bytes()) == r


# --- the public sample set ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def public() -> list[LabelledImage]:
    if not (PUBLIC / "labels.csv").is_file():
        pytest.fail(f"the public sample set is missing at {PUBLIC}: the drift thresholds are checked on it")
    images = load_folder(PUBLIC)
    assert len(images) == 534, "the sample set's README promises 534 images"
    return images


def split(images: list[LabelledImage]) -> tuple[list[LabelledImage], list[LabelledImage]]:
    ref_idx, win_idx = halves(len(images))
    return [images[i] for i in ref_idx], [images[i] for i in win_idx]


def test_sample_set_halves_do_not_alarm(public: list[LabelledImage]) -> None:
    ref, win = split(public)
    r = report(summarise(ref), summarise(win))
    assert (r.reference_size, r.window_size) == (267, 267)
    assert not r.alert, r.scores
    assert all(s.psi is not None and s.psi < 0.1 for s in r.scores)  # "stable" on the PSI scale


@pytest.mark.parametrize("transform", ["inverted", "dark"])
def test_sample_set_inverted_or_dark_window_alarms(public: list[LabelledImage], transform: str) -> None:
    ref, win = split(public)
    r = report(summarise(ref), summarise(win, transform))
    assert r.alert
    assert flagged(r) == {"intensity"}
    intensity = by_feature(r)["intensity"]
    # Both tests see it, so neither threshold alone carries the decision.
    assert intensity.psi is not None and intensity.psi >= DriftThresholds().psi
    assert intensity.ks_statistic is not None and intensity.ks_statistic >= DriftThresholds().ks_statistic


def test_window_from_a_source_the_reference_lacks_is_source_drift(public: list[LabelledImage]) -> None:
    ref, _ = split(public)
    nih = [img for img in ref if img.source == "NIH-ChestXray14"]
    mhh = [img for img in public if img.source == "MHH-COVID19-image-repository"]
    r = report(summarise(nih), summarise(mhh))
    assert r.alert
    # A new site is drift by definition (docs/drift.md); this one also films mostly AP and enhances
    # contrast (CLAHE), which the view and intensity features see on their own.
    assert flagged(r) == {"source", "view", "intensity"}


# --- the windows: a replayed study adds nothing -------------------------------------------------------------


def test_a_study_replayed_after_a_crash_adds_no_second_sample_to_either_window() -> None:
    from datetime import UTC, datetime

    from stream_processors.drift_windows import DriftWindows, add_sample

    samples = [s.model_dump(mode="json") for s in films(3, 4)]
    at = datetime(2026, 12, 1, tzinfo=UTC)
    windows = DriftWindows()

    def add(w: DriftWindows, study_id: str, sample: dict[str, object]) -> DriftWindows:
        return add_sample(
            w,
            study_id=study_id,
            sample=sample,
            priority=0.5,
            model_version="7",
            scored_at=at,
            reference_size=2,
            window_size=10,
        )

    windows = add(add(windows, "a", samples[0]), "b", samples[1])  # the reference, full
    windows = add(windows, "c", samples[2])
    for study_id, sample in (("a", samples[0]), ("c", samples[2]), ("b", samples[1])):  # replayed
        windows = add(windows, study_id, sample)
    assert windows.reference_ids == ("a", "b") and len(windows.reference) == 2
    assert windows.window_ids == ("c",) and len(windows.window) == len(windows.window_priorities) == 1
    assert windows.added_since_report == 1
    # The ids live in the state document (saved and reloaded), never in the report.
    assert DriftWindows.model_validate(windows.model_dump(mode="json")) == windows
