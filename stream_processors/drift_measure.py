"""Measure the drift scores on a labelled image folder: the numbers docs/drift.md quotes for the thresholds.

    python -m stream_processors.drift_measure ../shared/datasets/cxr-public

The folder holds ``labels.csv`` (columns ``Path``, ``AP/PA``, ``source``) and the images it names. The
scenarios: two shuffled halves (what must not alarm), the same window inverted and darkened (what must),
a window from a source the reference lacks, and how often random halves and small windows alarm by chance.
Priorities are not measured here (no model runs): both sides get draws from one distribution, so the
``prediction`` row shows only sampling noise.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from cxr_triage.imaging import decode_grayscale
from stream_processors.drift import DriftThresholds, InputSample, drift_report, input_sample

SEED = 20240601


@dataclass(frozen=True)
class LabelledImage:
    pixels: np.ndarray
    view: str
    source: str


def _view(row: dict[str, str]) -> str:
    """The events' view vocabulary (``cxr_triage.events.View``) from CheXpert's two columns."""
    if (row.get("Frontal/Lateral") or "").lower() == "lateral":
        return "LATERAL"
    return (row.get("AP/PA") or "").upper() if row.get("AP/PA") in ("AP", "PA") else "UNKNOWN"


def load_folder(root: Path) -> list[LabelledImage]:
    labels = root / "labels.csv"
    if not labels.is_file():
        raise FileNotFoundError(f"no labels.csv in {root}: the public sample set is expected there")
    with labels.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [
        LabelledImage(
            pixels=decode_grayscale((root / row["Path"]).read_bytes()),
            view=_view(row),
            source=row.get("source") or "unknown",
        )
        for row in rows
    ]


def summarise(images: Sequence[LabelledImage], transform: str = "none") -> list[InputSample]:
    def pixels(img: LabelledImage) -> np.ndarray:
        if transform == "inverted":
            return 255 - img.pixels
        if transform == "dark":
            return (img.pixels.astype(np.float32) * 0.2).astype(np.uint8)
        return img.pixels

    return [input_sample(pixels(img), view=img.view, source=img.source) for img in images]


def halves(n: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return order[: n // 2], order[n // 2 :]


def _rounded(value: float | None, digits: int, *, sig: bool = False) -> float | None:
    if value is None:
        return None
    return float(f"{value:.{digits}g}") if sig else round(value, digits)


def _row(
    name: str,
    reference: Sequence[InputSample],
    window: Sequence[InputSample],
    limits: DriftThresholds,
    seed: int = SEED,
) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    report = drift_report(
        reference,
        window,
        reference_priorities=rng.beta(2.0, 2.0, len(reference)).tolist(),
        window_priorities=rng.beta(2.0, 2.0, len(window)).tolist(),
        model_version="measure",
        thresholds=limits,
    )
    return {
        "scenario": name,
        "reference": report.reference_size,
        "window": report.window_size,
        "alert": report.alert,
        "scores": {
            s.feature: {
                "psi": _rounded(s.psi, 4),
                "ks": _rounded(s.ks_statistic, 3),
                "p": _rounded(s.ks_pvalue, 3, sig=True),
                "flagged": s.flagged,
            }
            for s in report.scores
        },
    }


def _chance_alarms(
    samples: Sequence[InputSample], window_size: int, trials: int, limits: DriftThresholds
) -> dict[str, object]:
    """Random disjoint reference/window draws from one population: how often does anything flag?"""
    rng = np.random.default_rng(SEED)
    alarms, worst_psi = 0, 0.0
    for _ in range(trials):
        order = rng.permutation(len(samples))
        ref = [samples[i] for i in order[: len(samples) // 2]]
        win = [samples[i] for i in order[len(samples) // 2 :][:window_size]]
        report = drift_report(
            ref,
            win,
            reference_priorities=rng.beta(2.0, 2.0, len(ref)).tolist(),
            window_priorities=rng.beta(2.0, 2.0, len(win)).tolist(),
            model_version="measure",
            thresholds=limits,
        )
        alarms += report.alert
        worst_psi = max(worst_psi, max(s.psi or 0.0 for s in report.scores))
    return {"window": window_size, "trials": trials, "alarms": alarms, "max_psi": round(worst_psi, 4)}


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--trials", default=200, show_default=True, help="Random splits for the chance-alarm rate.")
@click.option("--quantile-bins", type=int, default=None, help="Override the continuous PSI's bin count.")
@click.option(
    "--min-window", type=int, default=None, help="Override min_window (also the small window size)."
)
def main(folder: Path, trials: int, quantile_bins: int | None, min_window: int | None) -> None:
    """Print the drift scores of the standard scenarios on FOLDER as JSON lines."""
    images = load_folder(folder)
    plain = summarise(images)
    ref_idx, win_idx = halves(len(images))
    reference = [plain[i] for i in ref_idx]
    window_images = [images[i] for i in win_idx]
    overrides = {"quantile_bins": quantile_bins, "min_window": min_window}
    limits = DriftThresholds(**{k: v for k, v in overrides.items() if v is not None})
    print(json.dumps({"thresholds": limits.model_dump()}))
    print(json.dumps(_row("halves", reference, [plain[i] for i in win_idx], limits)))
    print(json.dumps(_row("inverted", reference, summarise(window_images, "inverted"), limits)))
    print(json.dumps(_row("dark x0.2", reference, summarise(window_images, "dark"), limits)))
    sources = sorted({img.source for img in images})
    if len(sources) > 1:
        majority, *others = sorted(sources, key=lambda s: -sum(img.source == s for img in images))
        # The reference keeps its half's majority-source images; the window is every image of the others.
        only_major = [s for s in reference if s.source == majority]
        new_source = [s for s in plain if s.source in others]
        print(
            json.dumps(
                _row(f"window {'+'.join(others)} vs reference {majority}", only_major, new_source, limits)
            )
        )
    for size in (limits.min_window, len(images) - len(images) // 2):
        print(json.dumps({"chance_alarms": _chance_alarms(plain, size, trials, limits)}))


if __name__ == "__main__":
    main()
