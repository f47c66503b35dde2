"""``cxr-triage simulate report``: how much sooner abnormal studies are read with triage than with FIFO."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import click
import numpy as np
from tqdm import tqdm

from bench.simulate.live import (
    PATTERNS,
    Ledger,
    LivePlan,
    Pattern,
    Reading,
    arrival_offsets,
    prepare_arrivals,
    run_live,
    summarise_live,
)
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
from cxr_triage.ingest.pseudonym import pseudonymiser
from cxr_triage.ingest.validate import prepare_bytes
from cxr_triage.settings import load_settings
from cxr_triage.sla import SlaPolicy, Tier

F = TypeVar("F", bound=Callable[..., Any])


def reading_options(command: F) -> F:
    """``--reading``, ``--mean-reading-min`` and ``--sd-reading-min``: one reading-time model for both commands."""
    for option in reversed(
        (
            click.option(
                "--reading",
                type=click.Choice(["exponential", "lognormal"]),
                default="lognormal",
                show_default=True,
            ),
            click.option(
                "--mean-reading-min",
                type=click.FloatRange(min=0.0, min_open=True),
                default=5.0,
                show_default=True,
            ),
            click.option(
                "--sd-reading-min",
                type=click.FloatRange(min=0.0, min_open=True),
                default=None,
                help="lognormal only (default: half the mean).",
            ),
        )
    ):
        command = option(command)
    return command


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
@reading_options
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
@click.option(
    "--aging-horizon-min",
    type=str,
    default=None,
    help="Read the worklist as if CXR_SLA_AGING_HORIZON_MIN were this (minutes, or 'none'); default: the "
    "setting's value, as the API reads it.",
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
    aging_horizon_min: str | None,
    seed: int,
    out: Path,
    curve: bool,
    as_json: bool,
) -> None:
    """Read the same shifts FIFO and in the worklist's order; report waits by class, with 95% intervals."""
    sla = SlaPolicy()
    if aging_horizon_min is not None:
        try:
            horizon = None if aging_horizon_min.lower() == "none" else float(aging_horizon_min)
            sla = SlaPolicy.model_validate({**sla.model_dump(), "aging_horizon_min": horizon})
        except ValueError as exc:  # pydantic's ValidationError is one
            raise click.BadParameter(
                f"{aging_horizon_min!r}: minutes above 0, or 'none'", param_hint="--aging-horizon-min"
            ) from exc
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
            "sla": sla.model_dump(),
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
        plots = ", ".join(str(out / name) for name in ("waits.png", "reduction-by-auroc.png")[: 1 + curve])
        click.echo(f"written: {out / 'report.json'}, {out / 'report.md'}, {plots}")


def reader_tokens(home: Path, count: int) -> dict[str, str]:
    """A token for each simulated radiologist (``sim-reader-N``, role radiologist), new on every run."""
    from priority_queue_api.users import Role, UserExists, add_user, users_file

    path = users_file(home)
    tokens = {}
    for n in range(1, count + 1):
        name = f"sim-reader-{n}"
        try:
            issued = add_user(path, name=name, role=Role.RADIOLOGIST)
        except UserExists:
            issued = add_user(path, name=name, role=Role.RADIOLOGIST, rotate=True)
        tokens[name] = issued.token
    return tokens


@simulate.command("live")
@click.option(
    "--data",
    "data",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A CheXpert-layout folder (labels.csv + images): the images sent and the truth of the verdicts.",
)
@click.option("--pattern", type=click.Choice(PATTERNS), default="poisson", show_default=True)
@click.option("--studies", type=click.IntRange(min=1), default=40, show_default=True)
@click.option(
    "--gap-s",
    type=click.FloatRange(min=0.0),
    default=1.0,
    show_default=True,
    help="single: between studies; burst: between bursts.",
)
@click.option("--burst", type=click.IntRange(min=1), default=10, show_default=True, help="Studies per burst.")
@click.option(
    "--rate",
    "rate_per_s",
    type=click.FloatRange(min=0.0, min_open=True),
    default=1.0,
    show_default=True,
    help="poisson: studies per second (λ).",
)
@click.option(
    "--day-s",
    type=click.FloatRange(min=1.0),
    default=240.0,
    show_default=True,
    help="diurnal: a day's arrivals compressed into this many seconds.",
)
@click.option(
    "--prevalence",
    type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
    default=None,
    help="Fraction of abnormal studies sent (default: the folder's own mix).",
)
@click.option("--radiologists", type=click.IntRange(min=1, max=16), default=2, show_default=True)
@reading_options
@click.option(
    "--speed",
    type=click.FloatRange(min=1.0),
    default=60.0,
    show_default=True,
    help="Time compression of reading: simulated minutes per wall-clock minute (60: a 5-minute read takes 5 s).",
)
@click.option(
    "--timeout-s",
    type=click.FloatRange(min=1.0),
    default=600.0,
    show_default=True,
    help="Stop then, read or not.",
)
@click.option("--seed", type=int, default=20261203, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def live_command(  # one option each
    data: Path,
    pattern: Pattern,
    studies: int,
    gap_s: float,
    burst: int,
    rate_per_s: float,
    day_s: float,
    prevalence: float | None,
    radiologists: int,
    reading: str,
    mean_reading_min: float,
    sd_reading_min: float | None,
    speed: float,
    timeout_s: float,
    seed: int,
    as_json: bool,
) -> None:
    """Send real images to the running stack and let simulated radiologists read them.

    \b
    Examples:
      cxr-triage simulate live --data ../shared/datasets/cxr-public --pattern burst --studies 30 --burst 10
      cxr-triage simulate live --data DIR --pattern diurnal --studies 200 --day-s 300 --radiologists 3 --json
    """
    from trainer.data.manifest import Verify, build_manifest
    from trainer.data.open import open_sources

    settings = load_settings()
    manifest = build_manifest(open_sources([data]), verify=Verify.EXISTS)
    examples = [e for e in manifest.examples if not np.isnan(e.abnormal)]
    if not examples:
        raise click.ClickException(f"no image of {data} has a known abnormal / normal truth")
    rng = np.random.default_rng(seed)
    abnormal = np.array([e.abnormal for e in examples], dtype=bool)
    chance = None
    if prevalence is not None:
        if abnormal.all() or not abnormal.any():
            raise click.BadParameter("the folder has only one class", param_hint="--prevalence")
        chance = np.where(abnormal, prevalence / abnormal.sum(), (1 - prevalence) / (~abnormal).sum())
    picks = rng.choice(len(examples), size=studies, p=chance)
    with tqdm(total=studies, desc="preparing", unit="study", disable=None, leave=False) as bar:
        arrivals = []
        for chunk in np.array_split(picks, max(1, studies // 20)):
            arrivals += prepare_arrivals(examples, chunk.tolist(), settings, rng)
            bar.update(len(chunk))
    known = {}
    pseudonyms = pseudonymiser(settings)
    for example in examples:  # backlog studies of these images (e.g. `make demo`'s) can be read truthfully
        known[prepare_bytes(example.path.read_bytes(), pseudonyms).study_id] = example
    ledger = Ledger(studies={study.study_id: study for _, study in arrivals}, known=known)
    plan = LivePlan(
        arrivals=arrivals,
        offsets=arrival_offsets(
            pattern, studies, rng, gap_s=gap_s, burst=burst, rate_per_s=rate_per_s, day_s=day_s
        ),
        reading=Reading(reading, mean_reading_min, sd_reading_min, speed),
        tokens=reader_tokens(settings.home, radiologists),
        seed=seed,
        timeout_s=timeout_s,
    )
    bars = {
        name: tqdm(total=studies, desc=name, unit="study", disable=None, position=i)
        for i, name in enumerate(("sent", "scored", "read"))
    }

    def show(state: Ledger) -> None:
        for name, bar in bars.items():
            bar.n = getattr(state, name)
            bar.refresh()

    try:
        seconds = run_live(settings, plan, ledger, progress=show)
    finally:
        for bar in bars.values():
            bar.close()
    summary = summarise_live(
        ledger,
        seconds=seconds,
        settings={
            "pattern": pattern,
            "studies": studies,
            "radiologists": radiologists,
            "reading": reading,
            "mean_reading_min": mean_reading_min,
            "speed": speed,
            "seed": seed,
        },
    )
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(live_table(summary))
    if summary["errors"]:
        raise click.ClickException(f"the run had errors: {summary['errors']}")


def live_table(summary: dict[str, Any]) -> str:
    """The summary for a person: counts, then time-to-read (seconds) by truth and by tier."""
    lines = [
        f"sent {summary['studies_sent']}, scored {summary['studies_scored']}, read {summary['studies_read']} "
        f"in {summary['seconds']} s (backlog read: {summary['backlog_read']}, held unread and released: "
        f"{summary['held_unread']})",
    ]
    e2e = summary["e2e_latency_s"]
    if e2e["n"]:
        lines.append(f"send -> scored: p50 {e2e['p50']} s, p95 {e2e['p95']} s, max {e2e['max']} s")
    lines.append(f"{'time to read (s)':<22}{'n':>5}{'mean':>9}{'p50':>9}{'p95':>9}{'max':>9}")
    groups = {**summary["time_to_read_s"]["by_truth"], **summary["time_to_read_s"]["by_tier"]}
    for name, stats in groups.items():
        if stats["n"]:
            lines.append(
                f"{name:<22}{stats['n']:>5}{stats['mean']:>9}{stats['p50']:>9}{stats['p95']:>9}{stats['max']:>9}"
            )
    return "\n".join(lines)
