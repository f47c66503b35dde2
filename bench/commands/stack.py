"""``cxr-triage bench triton|pipeline|all``: against a stack, private (free ports) or ``--use-running``."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from bench.commands.options import (
    bench_setup,
    bench_stack,
    common_options,
    emit,
    use_running_option,
    workers_option,
)
from bench.stack import BENCH_COMPONENTS


@click.command("triton")
@common_options
@use_running_option
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

    with bench_setup(data, threads, providers) as setup, bench_stack(use_running, "triton") as stack:
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
    emit(
        results,
        as_json,
        lambda rs: [
            f"batch {r['batch']} concurrency {r['concurrency']}: {r['images_per_s']:6.1f} images/s, "
            f"p50 {r['latency']['p50_ms']} ms, p99 {r['latency']['p99_ms']} ms ({r['requests']} requests, "
            f"{r['errors']} errors)"
            for r in rs
        ],
    )


@click.command("pipeline")
@common_options
@workers_option
@click.option("--n", type=click.IntRange(min=1, max=5000), default=64, show_default=True, help="Studies.")
@click.option("--pattern", type=click.Choice(["steady", "burst"]), default="burst", show_default=True)
@click.option(
    "--rate",
    type=click.FloatRange(min=0.01, max=1000),
    default=2.0,
    show_default=True,
    help="Studies/s for --pattern steady.",
)
@use_running_option
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
        bench_setup(data, threads, providers) as setup,
        bench_stack(use_running, BENCH_COMPONENTS, workers) as stack,
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
    emit(
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


@click.command("all")
@common_options
@workers_option
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("docs/bench"),
    show_default=True,
    help="Where inference.json and inference.md are written.",
)
@use_running_option
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
        bench_setup(data, threads, providers) as setup,
        bench_stack(use_running, BENCH_COMPONENTS, workers) as stack,
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
    emit(
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
