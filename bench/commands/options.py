"""What the ``cxr-triage bench`` commands share: the common options, the setup, the stack, the output."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from bench.samples import DEFAULT_DATA_DIR

F = TypeVar("F", bound=Callable[..., Any])

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
input_size_option = click.option(
    "--input-size",
    type=click.IntRange(32, 1024),
    default=None,
    help="[default: CXR_INITIAL_MODEL_INPUT_SIZE]",
)
use_running_option = click.option(
    "--use-running", is_flag=True, help="Use the stack CXR_* points at instead of a private one."
)
workers_option = click.option(
    "--workers",
    type=click.IntRange(min=1, max=8),
    default=1,
    show_default=True,
    help="Inference workers of the private stack.",
)


def common_options(func: F) -> F:
    """``--json``, ``--data``, ``--threads`` and ``--providers``, in that order."""
    options = [
        json_option,
        click.option(
            "--data",
            type=click.Path(path_type=Path),
            default=DEFAULT_DATA_DIR,
            show_default=True,
            help="Public sample set (images/, labels.csv); generated images when absent.",
        ),
        click.option(
            "--threads",
            type=click.IntRange(min=1),
            default=None,
            help="ORT intra-op threads [default: cores].",
        ),
        click.option(
            "--providers",
            default="cpu",
            show_default=True,
            help="Raw ORT execution providers: cpu, auto (TensorRT/CUDA when present) or a comma list.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@contextmanager
def bench_setup(data: Path, threads: int | None, providers: str) -> Iterator[Any]:
    """A ``bench.suite.Setup`` with a scratch folder that is removed afterwards."""
    from bench.raw import default_threads, resolve_providers
    from bench.suite import Setup

    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as scratch:
        yield Setup(
            data_dir=data,
            scratch=Path(scratch),
            threads=threads or default_threads(),
            providers=tuple(resolve_providers(providers)),
        )


@contextmanager
def bench_stack(use_running: bool, components: str, workers: int = 1) -> Iterator[Any]:
    """The stack ``CXR_*`` points at (``--use-running``), else a private one of ``components``."""
    from bench.stack import private_stack, running_stack

    if use_running:
        yield running_stack()
        return
    with private_stack(components=components, worker_count=workers) as stack:
        yield stack


def resolve_input_size(value: int | None) -> int:
    """``--input-size``, else the size of the stack's untrained model (``CXR_INITIAL_MODEL_INPUT_SIZE``)."""
    from cxr_triage.settings import load_settings

    return value or load_settings().initial_model_input_size


def emit(payload: Any, as_json: bool, lines: Callable[[Any], list[str]]) -> None:
    """``payload`` as one JSON object, or as the lines ``lines`` makes of it."""
    if as_json:
        click.echo(json.dumps(payload, indent=2))
    else:
        for line in lines(payload):
            click.echo(line)
