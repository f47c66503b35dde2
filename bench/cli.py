"""``cxr-triage bench raw|triton|pipeline|int8|all``: bounded in count and time, loopback only."""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from bench.samples import DEFAULT_DATA_DIR

F = TypeVar("F", bound=Callable[..., Any])


def _common(func: F) -> F:
    options = [
        click.option("--json", "as_json", is_flag=True, help="Print one JSON object."),
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
def _setup(data: Path, threads: int | None, providers: str) -> Iterator[Any]:
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
def _stack(use_running: bool, components: str, workers: int = 1) -> Iterator[Any]:
    from bench.stack import private_stack, running_stack

    if use_running:
        yield running_stack()
        return
    with private_stack(components=components, worker_count=workers) as stack:
        yield stack


def _input_size(value: int | None) -> int:
    from cxr_triage.settings import load_settings

    return value or load_settings().model_input_size


def _emit(payload: Any, as_json: bool, lines: Callable[[Any], list[str]]) -> None:
    if as_json:
        click.echo(json.dumps(payload, indent=2))
    else:
        for line in lines(payload):
            click.echo(line)


@click.group()
def bench() -> None:
    """Measure inference: raw ONNX Runtime, Triton gRPC, the full pipeline, FP32 vs INT8."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # ORT's graph-cleanup warnings are not results


@bench.command("raw")
@_common
@click.option(
    "--model",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="ONNX file [default: export the untrained DenseNet121 as `model init` does].",
)
@click.option("--variant", type=click.Choice(["fp32", "int8"]), default="fp32", show_default=True)
@click.option(
    "--batch", "batches", type=click.IntRange(min=1), multiple=True, default=(1, 8, 32), show_default=True
)
@click.option(
    "--input-size", type=click.IntRange(32, 1024), default=None, help="[default: CXR_MODEL_INPUT_SIZE]"
)
@click.option("--max-seconds", type=float, default=10.0, show_default=True, help="Per batch size.")
def raw_command(
    as_json: bool,
    data: Path,
    threads: int | None,
    providers: str,
    model: Path | None,
    variant: str,
    batches: tuple[int, ...],
    input_size: int | None,
    max_seconds: float,
) -> None:
    """Raw ONNX Runtime throughput (images/s) at each batch size."""
    from bench import suite
    from bench.variants import exported_fp32, model_for

    size = _input_size(input_size)
    with _setup(data, threads, providers) as setup:
        fp32 = model or exported_fp32(setup.scratch, input_size=size)
        path = model_for(
            variant, fp32, setup.scratch, input_size=size, calibration=suite.calibration_paths(setup)
        )
        results = [
            r.as_dict()
            for r in suite.raw(
                setup, path, input_size=size, batches=batches, max_seconds=max_seconds, variant=variant
            )
        ]
    _emit(
        results,
        as_json,
        lambda rs: [
            f"{r['variant']} batch {r['batch']:>3}: {r['images_per_s']:7.1f} images/s (median of {r['runs']} runs, "
            f"best {r['best_images_per_s']}) {','.join(r['providers'])}"
            for r in rs
        ],
    )


@bench.command("triton")
@_common
@click.option("--use-running", is_flag=True, help="Use the stack CXR_* points at instead of a private one.")
@click.option(
    "--concurrency",
    "concurrencies",
    type=click.IntRange(min=1, max=64),
    multiple=True,
    default=(1, 4, 8),
    show_default=True,
)
@click.option(
    "--batch", "batches", type=click.IntRange(min=1, max=32), multiple=True, default=(1,), show_default=True
)
@click.option("--max-requests", type=click.IntRange(min=1, max=10_000), default=200, show_default=True)
@click.option("--max-seconds", type=float, default=10.0, show_default=True, help="Per concurrency level.")
def triton_command(
    as_json: bool,
    data: Path,
    threads: int | None,
    providers: str,
    use_running: bool,
    concurrencies: tuple[int, ...],
    batches: tuple[int, ...],
    max_requests: int,
    max_seconds: float,
) -> None:
    """Triton throughput and p50/p99 latency over gRPC at each concurrency."""
    from bench import suite

    with _setup(data, threads, providers) as setup, _stack(use_running, "triton") as stack:
        results = [
            r.as_dict()
            for r in suite.triton(
                setup,
                stack,
                concurrencies=concurrencies,
                batches=batches,
                max_requests=max_requests,
                max_seconds=max_seconds,
            )
        ]
    _emit(
        results,
        as_json,
        lambda rs: [
            f"batch {r['batch']} concurrency {r['concurrency']}: {r['images_per_s']:6.1f} images/s, "
            f"p50 {r['latency']['p50_ms']} ms, p99 {r['latency']['p99_ms']} ms ({r['requests']} requests, "
            f"{r['errors']} errors)"
            for r in rs
        ],
    )


@bench.command("pipeline")
@_common
@click.option(
    "--workers",
    type=click.IntRange(min=1, max=8),
    default=1,
    show_default=True,
    help="Inference workers of the private stack.",
)
@click.option("--n", type=click.IntRange(min=1, max=5000), default=64, show_default=True, help="Studies.")
@click.option("--pattern", type=click.Choice(["steady", "burst"]), default="burst", show_default=True)
@click.option(
    "--rate",
    type=click.FloatRange(min=0.01, max=1000),
    default=2.0,
    show_default=True,
    help="Studies/s for --pattern steady.",
)
@click.option("--use-running", is_flag=True, help="Use the stack CXR_* points at instead of a private one.")
@click.option(
    "--variant",
    type=click.Choice(["fp32", "int8"]),
    default="fp32",
    show_default=True,
    help="int8: quantise the served model and serve it as a new version (private stack only).",
)
@click.option(
    "--timeout", type=float, default=300.0, show_default=True, help="Seconds to wait for the worklist."
)
@click.option("--raw-seconds", type=float, default=10.0, show_default=True, help="Raw ORT reference timing.")
def pipeline_command(
    as_json: bool,
    data: Path,
    threads: int | None,
    providers: str,
    workers: int,
    n: int,
    pattern: str,
    rate: float,
    use_running: bool,
    variant: str,
    timeout: float,
    raw_seconds: float,
) -> None:
    """Produce N studies and time them to the worklist: studies/s, e2e latency, lost, duplicated."""
    from bench import suite

    with (
        _setup(data, threads, providers) as setup,
        _stack(use_running, "kafka,redis,triton,worker", workers) as stack,
    ):
        summary = suite.pipeline(
            setup,
            stack,
            n=n,
            pattern=pattern,  # type: ignore[arg-type]
            rate_per_s=rate,
            timeout_s=timeout,
            raw_seconds=raw_seconds,
            variant=variant,
        )
    _emit(
        summary,
        as_json,
        lambda s: [
            f"{s['pattern']} {s['n']} studies ({s['variant']}, model v{s['model_version']}): "
            f"{s['pipeline_studies_per_s']} studies/s = {s['ratio']} x raw ORT batch {s['raw_batch']} "
            f"({s['raw_images_per_s']} images/s); e2e p50 {s['e2e_p50_ms']} ms, p99 {s['e2e_p99_ms']} ms; "
            f"lost {s['lost']}, duplicated {s['duplicated']}"
        ],
    )
    if summary["lost"]:
        sys.exit(1)


@bench.command("int8")
@_common
@click.option(
    "--model",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="FP32 ONNX file [default: export the untrained DenseNet121 as `model init` does].",
)
@click.option(
    "--input-size", type=click.IntRange(32, 1024), default=None, help="[default: CXR_MODEL_INPUT_SIZE]"
)
@click.option(
    "--calibration",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Images used to calibrate (the rest evaluate).",
)
@click.option("--rounds", type=click.IntRange(min=3, max=200), default=12, show_default=True)
@click.option("--eval-limit", type=click.IntRange(min=1), default=None, help="Evaluate on at most this many.")
def int8_command(
    as_json: bool,
    data: Path,
    threads: int | None,
    providers: str,
    model: Path | None,
    input_size: int | None,
    calibration: int,
    rounds: int,
    eval_limit: int | None,
) -> None:
    """FP32 vs INT8: speed-up, max abs probability difference, AUROC on the labelled sample."""
    from bench import suite
    from bench.variants import exported_fp32

    size = _input_size(input_size)
    with _setup(data, threads, providers) as setup:
        fp32 = model or exported_fp32(setup.scratch, input_size=size)
        result = suite.int8(
            setup, fp32, input_size=size, calibration=calibration, rounds=rounds, eval_limit=eval_limit
        )
    _emit(
        result,
        as_json,
        lambda r: [
            *(
                f"batch {p['batch']}: FP32 {p['fp32_images_per_s']} images/s, INT8 {p['int8_images_per_s']} images/s, "
                f"speed-up {p['speedup']}x"
                for p in r["speed"]
            ),
            f"max abs probability difference {r['max_abs_diff']}; AUROC FP32 {r['auroc_fp32']}, "
            f"INT8 {r['auroc_int8']} (difference {r['auroc_diff']}; {r['weights']} weights)",
        ],
    )


@bench.command("torch")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--input-size", type=click.IntRange(32, 1024), default=None, help="[default: CXR_MODEL_INPUT_SIZE]"
)
@click.option(
    "--batch", "batches", type=click.IntRange(min=1), multiple=True, default=(1, 8, 32), show_default=True
)
def torch_command(as_json: bool, input_size: int | None, batches: tuple[int, ...]) -> None:
    """PyTorch eager reference (CUDA FP32/FP16 when present, else CPU): the ceiling for bench/gpu.sh."""
    from bench.torch_reference import torch_reference

    results = torch_reference(input_size=_input_size(input_size), batches=batches)
    _emit(
        results,
        as_json,
        lambda rs: [
            f"{r['device']} {r['precision']} batch {r['batch']:>3}: {r['images_per_s']:8.1f} images/s"
            for r in rs
        ],
    )


@bench.command("all")
@_common
@click.option(
    "--workers",
    type=click.IntRange(min=1, max=8),
    default=1,
    show_default=True,
    help="Inference workers of the private stack.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("docs/bench"),
    show_default=True,
    help="Where inference.json and inference.md are written.",
)
@click.option("--use-running", is_flag=True, help="Use the stack CXR_* points at instead of a private one.")
@click.option("--burst-n", type=click.IntRange(min=1, max=5000), default=96, show_default=True)
@click.option("--steady-n", type=click.IntRange(min=1, max=5000), default=60, show_default=True)
@click.option("--rate", type=click.FloatRange(min=0.01, max=1000), default=2.0, show_default=True)
@click.option("--raw-seconds", type=float, default=10.0, show_default=True)
@click.option("--triton-seconds", type=float, default=10.0, show_default=True)
@click.option("--timeout", type=float, default=300.0, show_default=True)
def all_command(
    as_json: bool,
    data: Path,
    threads: int | None,
    providers: str,
    workers: int,
    out: Path,
    use_running: bool,
    burst_n: int,
    steady_n: int,
    rate: float,
    raw_seconds: float,
    triton_seconds: float,
    timeout: float,
) -> None:
    """Everything in one run on one stack; writes OUT/inference.json and OUT/inference.md."""
    from bench import report, suite

    command = "cxr-triage bench " + shlex.join(
        sys.argv[sys.argv.index("all") :] if "all" in sys.argv else ["all"]
    )
    with (
        _setup(data, threads, providers) as setup,
        _stack(use_running, "kafka,redis,triton,worker", workers) as stack,
    ):
        document = suite.run_all(
            setup,
            stack,
            burst_n=burst_n,
            steady_n=steady_n,
            rate_per_s=rate,
            raw_seconds=raw_seconds,
            triton_seconds=triton_seconds,
            timeout_s=timeout,
            command=command,
        )
    json_path, md_path = report.write(document, out)
    _emit(
        document,
        as_json,
        lambda d: [
            *(
                f"{t['name']}: {t['measured']} (wanted {t['target']}) {'met' if t['met'] else 'NOT met'}"
                for t in d["targets"]
            ),
            f"wrote {json_path} and {md_path}",
        ],
    )
