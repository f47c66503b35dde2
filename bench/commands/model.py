"""``cxr-triage bench raw|int8|torch``: a model file on this machine, no stack."""

from __future__ import annotations

from pathlib import Path

import click

from bench.commands.options import (
    bench_setup,
    common_options,
    emit,
    input_size_option,
    json_option,
    resolve_input_size,
)

batches_option = click.option(
    "--batch", "batches", type=click.IntRange(min=1), multiple=True, default=(1, 8, 32), show_default=True
)


@click.command("raw")
@common_options
@click.option(
    "--model",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="ONNX file [default: export the untrained DenseNet121 as `model init` does].",
)
@click.option("--variant", type=click.Choice(["fp32", "int8"]), default="fp32", show_default=True)
@batches_option
@input_size_option
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

    size = resolve_input_size(input_size)
    with bench_setup(data, threads, providers) as setup:
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
    emit(
        results,
        as_json,
        lambda rs: [
            f"{r['variant']} batch {r['batch']:>3}: {r['images_per_s']:7.1f} images/s (median of {r['runs']} runs, "
            f"best {r['best_images_per_s']}) {','.join(r['providers'])}"
            for r in rs
        ],
    )


@click.command("int8")
@common_options
@click.option(
    "--model",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="FP32 ONNX file [default: export the untrained DenseNet121 as `model init` does].",
)
@input_size_option
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

    size = resolve_input_size(input_size)
    with bench_setup(data, threads, providers) as setup:
        fp32 = model or exported_fp32(setup.scratch, input_size=size)
        result = suite.int8(
            setup, fp32, input_size=size, calibration=calibration, rounds=rounds, eval_limit=eval_limit
        )
    emit(
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


@click.command("torch")
@json_option
@input_size_option
@batches_option
def torch_command(as_json: bool, input_size: int | None, batches: tuple[int, ...]) -> None:
    """PyTorch eager reference (CUDA FP32/FP16 when present, else CPU): the ceiling for bench/gpu.sh."""
    from bench.torch_reference import torch_reference

    results = torch_reference(input_size=resolve_input_size(input_size), batches=batches)
    emit(
        results,
        as_json,
        lambda rs: [
            f"{r['device']} {r['precision']} batch {r['batch']:>3}: {r['images_per_s']:8.1f} images/s"
            for r in rs
        ],
    )
