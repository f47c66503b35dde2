"""``cxr-triage simulate report``: how much sooner abnormal studies are read with triage than with FIFO."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from bench.simulate.queueing import Pool, replayed_minutes
from bench.simulate.report import (
    Scenario,
    auroc,
    reduction_by_auroc,
    run_shifts,
    summarise,
    verdict,
    write_curve_plot,
    write_markdown,
    write_plot,
)
from cxr_triage.settings import load_settings
from cxr_triage.sla import SlaPolicy, Tier


@click.group()
def simulate() -> None:
    """Simulate reading shifts: triage against first-in-first-out, on the served model's scores."""


def served_pool(data: Path, *, sla: SlaPolicy) -> tuple[Pool, str, Callable[[float], Tier]]:
    """The served model's priority and tier for every image of ``data`` (CheXpert layout), and its version."""
    from cxr_triage.model.repository import ONNX_FILE, model_contract, model_dir, serving_version
    from cxr_triage.priority import priorities
    from inference_worker.config import WorkerSettings
    from trainer.data.manifest import Verify, build_manifest
    from trainer.data.open import open_sources
    from trainer.evaluate import score, scored_model

    settings = load_settings()
    version = serving_version(settings)
    if version is None:
        raise click.ClickException("no model is served yet: run `cxr-triage up` (or `cxr-triage model init`)")
    path = model_dir(settings) / str(version) / ONNX_FILE
    model = scored_model(path, uri=f"model repository version {version}", model_version=str(version))
    contract = model_contract(path, version=version, input_size=model.input_size)
    manifest = build_manifest(open_sources([data]), verify=Verify.DECODE)
    click.echo(f"scoring {len(manifest)} images with model version {version}...", err=True)
    priority = priorities(score(model, manifest), WorkerSettings().weights)
    tiers = contract.tiers(sla)
    pool = Pool(
        priority=priority,
        abnormal=np.asarray(manifest.abnormal(), dtype=bool),
        tier=tuple(tiers.tier_for(float(p)) for p in priority),
    )
    return pool, str(version), tiers.tier_for


@simulate.command("report")
@click.option(
    "--data",
    "data",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A CheXpert-layout folder (labels.csv + images) scored by the served model.",
)
@click.option("--radiologists", type=click.IntRange(min=1), default=2, show_default=True)
@click.option(
    "--utilization",
    type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
    default=0.85,
    show_default=True,
    help="Fraction of the radiologists' time spent reading.",
)
@click.option(
    "--prevalence",
    type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
    default=None,
    help="Fraction of abnormal arrivals (default: the folder's own mix).",
)
@click.option(
    "--reading", type=click.Choice(["exponential", "lognormal"]), default="lognormal", show_default=True
)
@click.option(
    "--mean-reading-min", type=click.FloatRange(min=0.0, min_open=True), default=5.0, show_default=True
)
@click.option(
    "--sd-reading-min",
    type=click.FloatRange(min=0.0, min_open=True),
    default=None,
    help="lognormal only (default: half the mean).",
)
@click.option(
    "--runs",
    type=click.IntRange(min=2),
    default=200,
    show_default=True,
    help="Seeded shifts, each read both ways.",
)
@click.option(
    "--studies", type=click.IntRange(min=10), default=500, show_default=True, help="Studies per shift."
)
@click.option(
    "--timestamps",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Replay these arrival times (one per line: epoch seconds or ISO 8601 with a zone) instead of "
    "Poisson arrivals; the mean reading time then follows from --utilization.",
)
@click.option("--seed", type=int, default=20261203, show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("docs/business-case"),
    show_default=True,
    help="Where the PNG, the Markdown table and the JSON go.",
)
@click.option(
    "--curve/--no-curve",
    default=True,
    show_default=True,
    help="Also the reduction against model AUROC, on simulated scores of known AUROC.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def report_command(  # one option each
    data: Path,
    radiologists: int,
    utilization: float,
    prevalence: float | None,
    reading: str,
    mean_reading_min: float,
    sd_reading_min: float | None,
    runs: int,
    studies: int,
    timestamps: Path | None,
    seed: int,
    out: Path,
    curve: bool,
    as_json: bool,
) -> None:
    """Read the same shifts FIFO and in the worklist's order; report waits by class, with 95% intervals."""
    sla = SlaPolicy()
    replay = None
    if timestamps is not None:
        try:
            replay = replayed_minutes(timestamps.read_text().splitlines())
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--timestamps") from exc
        # The day's own arrival rate; the radiologists are busy --utilization of the time.
        mean_reading_min = utilization * radiologists * float(replay[-1]) / (len(replay) - 1)
    pool, version, tier_for = served_pool(data, sla=sla)
    scenario = Scenario(
        radiologists=radiologists,
        utilisation=utilization,
        prevalence=float(pool.abnormal.mean()) if prevalence is None else prevalence,
        reading=reading,
        mean_reading_min=mean_reading_min,
        sd_reading_min=sd_reading_min,
        studies_per_run=studies,
        runs=runs,
        seed=seed,
        replay_min=replay,
    )
    with tqdm(total=runs, desc="shifts", unit="shift", disable=None) as bar:
        shifts = run_shifts(pool, scenario, sla, progress=bar.update)
    result = {
        **summarise(shifts),
        "model_version": version,
        "auroc": auroc(pool),
        "scenario": {
            **{k: v for k, v in scenario.__dict__.items() if k != "replay_min"},
            "arrivals": "poisson" if replay is None else f"replayed ({len(replay)} timestamps)",
            "rate_per_min": scenario.rate_per_min,
        },
    }
    if curve:
        curve_scenario = replace(scenario, runs=max(2, runs // 4))
        with tqdm(total=7, desc="AUROC curve", unit="model", disable=None) as bar:
            result["reduction_by_auroc"] = reduction_by_auroc(
                curve_scenario, sla, tier_for, progress=bar.update
            )
    result["target"] = verdict(result)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result, indent=2))
    write_markdown(out / "report.md", result)
    write_plot(out / "waits.png", shifts)
    if curve:
        write_curve_plot(out / "reduction-by-auroc.png", result)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo((out / "report.md").read_text())
        click.echo(f"written: {out / 'report.json'}, {out / 'report.md'}, {out / 'waits.png'}")
