"""Commands of the inference service: ``cxr-triage model ...`` and ``cxr-triage worker ...``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cxr_triage.settings import load_settings


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


@click.group()
def worker() -> None:
    """The inference worker: Kafka studies -> Triton -> Redis worklist."""


@worker.command("run")
@click.option("--index", type=click.IntRange(min=0), default=0, show_default=True, help="Worker number.")
def run(index: int) -> None:
    """Consume studies, score them on Triton and write the worklist until SIGTERM/SIGINT."""
    from inference_worker.app import run_worker

    raise SystemExit(run_worker(load_settings(), index=index))
