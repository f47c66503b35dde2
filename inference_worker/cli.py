"""Commands of the inference service: ``cxr-triage model ...`` and ``cxr-triage worker ...``."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cxr_triage.events import DecisionAction, RolloutMode
from cxr_triage.settings import Settings, load_settings

if TYPE_CHECKING:
    from inference_worker.decisions import DecisionSink


@click.group()
def model() -> None:
    """The model Triton serves."""


@model.command("init")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.option("--seed", type=int, default=None, help="Seed of the random initialisation (default: fixed).")
@click.option(
    "--input-size",
    type=click.IntRange(32, 1024),
    default=None,
    help="Input size of the untrained export in px (default: CXR_INITIAL_MODEL_INPUT_SIZE, 224); trained "
    "models state their own.",
)
def init(as_json: bool, seed: int | None, input_size: int | None) -> None:
    """Export an untrained DenseNet121 to the Triton model repository, unless a version exists."""
    from cxr_triage.model.export import DEFAULT_SEED
    from cxr_triage.model.repository import ensure_model

    result = ensure_model(
        load_settings(),
        seed=DEFAULT_SEED if seed is None else seed,
        input_size=input_size,
    )
    if as_json:
        click.echo(
            json.dumps(
                {
                    "model_name": result.model_name,
                    "version": result.version,
                    "created": result.created,
                    "path": str(result.path),
                    "weights": result.weights,
                }
            )
        )
        return
    verb = "created" if result.created else "kept existing"
    click.echo(f"{verb} {result.model_name} version {result.version} ({result.weights}): {result.path}")


@model.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def list_(as_json: bool) -> None:
    """The model's versions in the repository, and which one is served."""
    from cxr_triage.model.repository import list_versions, serving_version, version_metadata

    settings = load_settings()
    versions, served = list_versions(settings), serving_version(settings)
    if as_json:
        rows = [{"version": v, "serving": v == served, **version_metadata(settings, v)} for v in versions]
        click.echo(json.dumps({"model_name": settings.model_name, "serving": served, "versions": rows}))
        return
    for version in versions:
        click.echo(f"{'*' if version == served else ' '} {version}")


@model.command("add")
@click.argument("onnx_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--serve", is_flag=True, help="Serve the new version right away.")
def add(onnx_file: Path, serve: bool) -> None:
    """Copy an exported ONNX model in as the next version (see cxr_triage.model.export)."""
    from cxr_triage.model.repository import add_version, serve_version
    from cxr_triage.model.signature import ModelRejected

    settings = load_settings()
    try:
        version = add_version(settings, onnx_file, metadata={"added_by": "cxr-triage model add"})
    except ModelRejected as exc:
        raise click.ClickException(str(exc)) from exc
    if serve:
        serve_version(settings, version)
    click.echo(f"added {settings.model_name} version {version}{' (serving)' if serve else ''}")


@model.command("serve")
@click.argument("version", type=click.IntRange(min=1))
def serve(version: int) -> None:
    """Serve VERSION: Triton switches within seconds; the workers need no restart."""
    from cxr_triage.model.repository import VersionNotFound, serve_version

    settings = load_settings()
    try:
        serve_version(settings, version)
    except VersionNotFound as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"serving {settings.model_name} version {version}")


def _decision_sink() -> DecisionSink:
    # Looked up at call time, so tests can put an in-memory sink in its place.
    from inference_worker.decisions import kafka_sink

    return kafka_sink(load_settings())


def _start(version: int, *, mode: RolloutMode, fraction: float, action: DecisionAction) -> None:
    from cxr_triage.model.challenger import start_rollout
    from cxr_triage.model.repository import VersionNotFound
    from cxr_triage.model.rollout import RolloutError
    from inference_worker.decisions import DecisionNotPublished, operator_decision

    settings = load_settings()
    try:
        state = start_rollout(settings, version, mode=mode, fraction=fraction)
    except (VersionNotFound, RolloutError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"{mode}: {settings.model_name} version {state.challenger_version} beside champion "
        f"{state.champion_version or '?'} (fraction {state.fraction:g})"
    )
    try:
        _decision_sink()(operator_decision(state, action, reason=f"cxr-triage model {mode}"))
    except DecisionNotPublished as exc:
        raise click.ClickException(
            f"{mode} is in force but its decision event was not published ({exc}); "
            "run the command again to publish it"
        ) from exc


@model.command("shadow")
@click.argument("version", type=click.IntRange(min=1))
@click.option(
    "--fraction",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=1.0,
    show_default=True,
    help="Fraction of studies the challenger scores (stable by study id), for capacity.",
)
def shadow(version: int, fraction: float) -> None:
    """Score studies with VERSION beside the served model; the served model still orders the worklist."""
    _start(version, mode="shadow", fraction=fraction, action="shadow_started")


@model.command("canary")
@click.argument("version", type=click.IntRange(min=1))
@click.option(
    "--fraction",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    required=True,
    help="Fraction of studies VERSION orders (stable by study id: a study never changes model).",
)
def canary(version: int, fraction: float) -> None:
    """Let VERSION order a stable fraction of studies; the served model orders the rest."""
    _start(version, mode="canary", fraction=fraction, action="canary_started")


@model.group("rollout")
def rollout() -> None:
    """The challenger under online evaluation (shadow or canary)."""


@rollout.command("stop")
def rollout_stop() -> None:
    """Take the challenger out of Triton: the served model scores and orders every study again."""
    from cxr_triage.model.challenger import stop_rollout
    from inference_worker.decisions import DecisionNotPublished, operator_decision

    state = stop_rollout(load_settings())
    if not state.active:
        click.echo("no rollout in progress")
        return
    click.echo(f"stopped {state.mode} of version {state.challenger_version}")
    try:
        _decision_sink()(operator_decision(state, "stopped", reason="cxr-triage model rollout stop"))
    except DecisionNotPublished as exc:
        raise click.ClickException(f"stopped, but the decision event was not published ({exc})") from exc


def _online_evaluation(settings: Settings, challenger: str) -> dict[str, Any]:
    """What the processors computed for ``challenger`` (read-only from the feedback store); nulls when there is
    no store yet or it cannot be read: the status of the models must not depend on the processors."""
    from cxr_triage.feedback.rollout import read_rollout
    from cxr_triage.feedback.store import FeedbackStore, FeedbackStoreUnavailable

    empty: dict[str, Any] = {
        "judged": None,
        "action": None,
        "reason": None,
        "paired": None,
        "canary": None,
        "decision": None,
        "examples": None,
    }
    try:
        store = FeedbackStore.open_existing(settings.feedback_db_path)
        document, examples = read_rollout(store), store.count()
    except (FeedbackStoreUnavailable, sqlite3.Error, ValueError):
        return empty
    numbers = document.challengers.get(challenger, {}) if challenger else {}
    decision = document.decisions.get(challenger) if challenger else None
    current = document.current
    return {
        # The rollout the processors judge (the operators' last decision they read), which may lag the
        # repository's for a moment.
        "judged": None if current is None else current.model_dump(mode="json"),
        "action": numbers.get("action"),
        "reason": numbers.get("reason"),
        "paired": numbers.get("paired"),
        "canary": numbers.get("canary"),
        "decision": None
        if decision is None
        else {**decision.event.model_dump(mode="json"), "published": decision.published},
        "examples": examples,
    }


@model.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def status(as_json: bool) -> None:
    """The served model, the challenger under online evaluation, if any (from the repository), and the paired
    metrics the stream processors computed for it (from the feedback store)."""
    from cxr_triage.model.challenger import rollout_state
    from cxr_triage.model.repository import serving_version

    settings = load_settings()
    state, champion = rollout_state(settings), serving_version(settings)
    online = _online_evaluation(settings, state.challenger_version if state.active else "")
    if as_json:
        body = {
            "model_name": settings.model_name,
            "champion": champion,
            "rollout": {
                "mode": state.mode,
                "challenger": state.challenger_version or None,
                "fraction": state.fraction if state.active else None,
                "champion_at_start": state.champion_version or None,
            },
            "online_evaluation": online,
        }
        click.echo(json.dumps(body))
        return
    click.echo(f"champion: {settings.model_name} version {champion}")
    if not state.active:
        click.echo("no rollout in progress")
        return
    click.echo(f"{state.mode}: version {state.challenger_version}, fraction {state.fraction:g}")
    paired = online["paired"]
    if paired is not None:
        click.echo(
            f"paired: {paired['paired']} studies ({paired['abnormal']} abnormal), AUROC champion "
            f"{_fmt(paired['auroc_champion'])} challenger {_fmt(paired['auroc_challenger'])}"
        )
    if online["action"] is not None:
        click.echo(f"policy: {online['action']} ({online['reason']})")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@click.group()
def worker() -> None:
    """The inference worker: Kafka studies -> Triton -> Redis worklist."""


@worker.command("run")
@click.option("--index", type=click.IntRange(min=0), default=0, show_default=True, help="Worker number.")
def run(index: int) -> None:
    """Consume studies, score them on Triton and write the worklist until SIGTERM/SIGINT."""
    from inference_worker.app import run_worker

    raise SystemExit(run_worker(load_settings(), index=index))
