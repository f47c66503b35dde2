"""Commands of the inference service: ``cxr-triage model ...`` and ``cxr-triage worker ...``."""

from __future__ import annotations

import json

import click

from cxr_triage.settings import load_settings


@click.group()
def model() -> None:
    """The model Triton serves."""


@model.command("init")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.option("--seed", type=int, default=None, help="Seed of the random initialisation (default: fixed).")
def init(as_json: bool, seed: int | None) -> None:
    """Export an untrained DenseNet121 to the Triton model repository, unless a version exists."""
    from inference_worker.export import DEFAULT_SEED
    from inference_worker.model_repo import ensure_model

    result = ensure_model(load_settings(), seed=DEFAULT_SEED if seed is None else seed)
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


@click.group()
def worker() -> None:
    """The inference worker: Kafka studies -> Triton -> Redis worklist."""


@worker.command("run")
@click.option("--index", type=click.IntRange(min=0), default=0, show_default=True, help="Worker number.")
def run(index: int) -> None:
    """Consume studies, score them on Triton and write the worklist until SIGTERM/SIGINT."""
    from inference_worker.app import run_worker

    raise SystemExit(run_worker(load_settings(), index=index))
