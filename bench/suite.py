"""What each ``cxr-triage bench`` subcommand measures, composed from the modules beside this one."""

from __future__ import annotations

import logging
import statistics
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import report as report_mod
from bench.int8 import compare
from bench.pipeline import Pattern, PipelineResult, run_pipeline
from bench.raw import RawResult, make_session, measure, raw_bench, result_from
from bench.samples import (
    batch_of,
    distinct_copies,
    load_labelled,
    load_tensors,
    source_images,
)
from bench.stack import BenchStack
from bench.stats import ratio
from bench.triton import TritonResult, triton_bench, wait_until_ready
from bench.variants import model_for
from cxr_triage.model.export import read_metadata

logger = logging.getLogger(__name__)

TENSOR_IMAGES = 32  # distinct real images per timed batch (batch 32 holds no repeated image)


@dataclass(frozen=True)
class Setup:
    """What every measurement shares: where the data is, a scratch folder, and the ORT thread count."""

    data_dir: Path
    scratch: Path
    threads: int
    providers: tuple[str, ...] = ("CPUExecutionProvider",)


def sample_tensors(setup: Setup, input_size: int) -> Any:
    images = source_images(setup.data_dir, setup.scratch, minimum=TENSOR_IMAGES)
    return load_tensors(images[:TENSOR_IMAGES], input_size)


def calibration_paths(setup: Setup) -> list[Path]:
    return [image.path for image in load_labelled(setup.data_dir)] or source_images(
        setup.data_dir, setup.scratch, minimum=64
    )


def raw(
    setup: Setup,
    model_path: Path,
    *,
    input_size: int,
    batches: Sequence[int],
    max_seconds: float,
    variant: str = "fp32",
) -> list[RawResult]:
    return raw_bench(
        model_path,
        sample_tensors(setup, input_size),
        batches=batches,
        threads=setup.threads,
        providers=setup.providers,
        max_seconds=max_seconds,
        variant=variant,
    )


def triton(
    setup: Setup,
    stack: BenchStack,
    *,
    concurrencies: Sequence[int],
    batches: Sequence[int],
    max_requests: int,
    max_seconds: float,
) -> list[TritonResult]:
    settings = stack.settings
    return triton_bench(
        settings.triton_grpc_url,
        settings.model_name,
        sample_tensors(setup, input_size_of(stack.model_file()[0])),
        concurrencies=concurrencies,
        batches=batches,
        max_requests=max_requests,
        max_seconds=max_seconds,
    )


def input_size_of(model_path: Path) -> int:
    """The input size a model file takes: the model's own (``cxr_triage.model.contract``)."""
    from cxr_triage.model.signature import read_signature

    return read_signature(model_path).input_size


def serve_variant(setup: Setup, stack: BenchStack, variant: str) -> tuple[Path, str]:
    """The model file the stack serves for ``variant`` (INT8: quantised and published as a new version)."""
    fp32_path, version = stack.model_file()
    if variant == "fp32":
        return fp32_path, version
    if not stack.private:
        raise ValueError(
            "--variant int8 publishes a model version: only on a private stack, not --use-running"
        )
    settings = stack.settings
    int8_path = model_for(
        variant,
        fp32_path,
        setup.scratch,
        input_size=input_size_of(fp32_path),
        calibration=calibration_paths(setup),
    )
    from cxr_triage.model.repository import add_version, serve_version

    new_version = add_version(settings, int8_path, metadata={"variant": variant, "source_version": version})
    serve_version(settings, new_version)
    wait_until_ready(settings.triton_grpc_url, settings.model_name, version=str(new_version))
    return int8_path, str(new_version)


def pipeline(
    setup: Setup,
    stack: BenchStack,
    *,
    n: int,
    pattern: Pattern,
    rate_per_s: float,
    timeout_s: float,
    raw_seconds: float,
    variant: str = "fp32",
) -> dict[str, Any]:
    """The pipeline, bracketed by raw ORT runs (same file, the worker's batch size): the issue's JSON keys.

    Raw ONNX Runtime is timed just before and just after the pipeline, and the median of both is the
    reference, so that a change of load on a shared machine moves both sides of the ratio alike.
    """
    settings = stack.settings
    model_path, version = serve_variant(setup, stack, variant)
    wait_until_ready(settings.triton_grpc_url, settings.model_name, version=version)
    session = make_session(model_path, threads=setup.threads, providers=setup.providers)
    input_size = input_size_of(model_path)
    batch = batch_of(sample_tensors(setup, input_size), settings.worker_max_batch)
    sources = source_images(setup.data_dir, setup.scratch, minimum=min(n, 64))
    run_folder = setup.scratch / f"studies-{uuid.uuid4().hex[:8]}"
    paths = distinct_copies(sources, n, run_folder, nonce=run_folder.name)

    before = measure(session, batch, max_seconds=raw_seconds / 2)
    result = run_pipeline(
        settings, paths, pattern=pattern, input_size=input_size, rate_per_s=rate_per_s, timeout_s=timeout_s
    )
    after = measure(session, batch, max_seconds=raw_seconds / 2)
    raw_result = result_from(
        variant, len(batch), before.durations + after.durations, session.get_providers(), cpu=[before, after]
    )
    summary = pipeline_summary(raw_result, result, model_version=version, variant=variant)
    summary["raw_images_per_s_before"] = round(len(batch) / statistics.median(before.durations), 1)
    summary["raw_images_per_s_after"] = round(len(batch) / statistics.median(after.durations), 1)
    return summary


def pipeline_summary(
    raw_result: RawResult, result: PipelineResult, *, model_version: str, variant: str
) -> dict[str, Any]:
    e2e = result.e2e
    stack_cpu = sum(result.cpu.get("per_component_cpu_s", {}).values()) if result.cpu else 0.0
    per_study_ms = 1000.0 * stack_cpu / result.written if result.written and stack_cpu > 0 else None
    return {
        "n": result.n,
        "pattern": result.pattern,
        "rate_per_s": result.rate_per_s,
        "variant": variant,
        "model_version": model_version,
        "input_size": result.input_size,
        "raw_batch": raw_result.batch,
        "raw_images_per_s": raw_result.images_per_s,
        "pipeline_studies_per_s": result.studies_per_s,
        "ratio": ratio(result.studies_per_s, raw_result.images_per_s),
        "e2e_p50_ms": e2e.p50_ms if e2e else None,
        "e2e_p95_ms": e2e.p95_ms if e2e else None,
        "e2e_p99_ms": e2e.p99_ms if e2e else None,
        "lost": result.lost,
        "duplicated": result.duplicated,
        "seconds": result.seconds,
        # CPU cost per image, raw vs the whole stack per study: what the ratio would approach on an idle
        # machine where everything is CPU-bound (unmoved by other load, unlike wall-clock throughput).
        "raw_cpu_ms_per_image": raw_result.cpu_ms_per_image,
        "stack_cpu_ms_per_study": round(per_study_ms, 1) if per_study_ms else None,
        "cpu_efficiency": ratio(raw_result.cpu_ms_per_image or 0.0, per_study_ms or 0.0)
        if raw_result.cpu_ms_per_image and per_study_ms
        else None,
        "detail": result.as_dict(),
        "raw": raw_result.as_dict(),
    }


def int8(
    setup: Setup,
    fp32_path: Path,
    *,
    input_size: int,
    calibration: int,
    rounds: int,
    eval_limit: int | None,
) -> dict[str, Any]:
    images = load_labelled(setup.data_dir)
    if not images:
        raise FileNotFoundError(f"the INT8 comparison needs the labelled sample set at {setup.data_dir}")
    result = compare(
        fp32_path,
        setup.scratch / f"{fp32_path.stem}-int8.onnx",
        images,
        input_size=input_size,
        threads=setup.threads,
        calibration=calibration,
        rounds=rounds,
        eval_limit=eval_limit,
    )
    return result.as_dict()


def _headline(run: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "variant",
        "raw_images_per_s",
        "ratio",
        "raw_cpu_ms_per_image",
        "stack_cpu_ms_per_study",
        "cpu_efficiency",
    )
    return {key: run.get(key) for key in keys}


def run_all(
    setup: Setup,
    stack: BenchStack,
    *,
    burst_n: int,
    steady_n: int,
    rate_per_s: float,
    raw_seconds: float,
    triton_seconds: float,
    timeout_s: float,
    command: str,
) -> dict[str, Any]:
    """Every section in one run against ``stack``, on the file it serves, in an order that keeps them apart."""
    started = time.perf_counter()
    settings = stack.settings
    document: dict[str, Any] = {
        "generated_at": report_mod.now(),
        "command": command,
        "machine": report_mod.machine(),
    }
    model_path, version = stack.model_file()
    input_size = input_size_of(model_path)
    document["model"] = {
        "name": settings.model_name,
        "version": version,
        "input_size": input_size,
        "weights": read_metadata(model_path).get("cxr.weights", "unknown"),
        "threads": setup.threads,
    }
    wait_until_ready(settings.triton_grpc_url, settings.model_name)
    raw_results = raw(setup, model_path, input_size=input_size, batches=(1, 8, 32), max_seconds=raw_seconds)
    document["raw"] = [r.as_dict() for r in raw_results]
    document["triton"] = [
        r.as_dict()
        for r in triton(
            setup,
            stack,
            concurrencies=(1, 4, 8),
            batches=(1, 8),
            max_requests=200,
            max_seconds=triton_seconds,
        )
    ]
    burst = pipeline(
        setup,
        stack,
        n=burst_n,
        pattern="burst",
        rate_per_s=rate_per_s,
        timeout_s=timeout_s,
        raw_seconds=raw_seconds,
    )
    steady = pipeline(
        setup,
        stack,
        n=steady_n,
        pattern="steady",
        rate_per_s=rate_per_s,
        timeout_s=timeout_s,
        raw_seconds=raw_seconds,
    )
    document["int8"] = int8(
        setup, model_path, input_size=input_size, calibration=64, rounds=12, eval_limit=None
    )
    runs = {"burst": burst, "steady": steady}
    if stack.private:  # serving another version is for a private stack only; last, since it stays served
        runs["burst-int8"] = pipeline(
            setup,
            stack,
            n=burst_n,
            pattern="burst",
            rate_per_s=rate_per_s,
            timeout_s=timeout_s,
            raw_seconds=raw_seconds,
            variant="int8",
        )
    document["pipeline"] = {name: {**run["detail"], **_headline(run)} for name, run in runs.items()}
    document["summary"] = {key: value for key, value in burst.items() if key not in ("detail", "raw")}
    document["summary"]["steady_e2e_p50_ms"] = steady["e2e_p50_ms"]
    document["summary"]["steady_e2e_p99_ms"] = steady["e2e_p99_ms"]
    document["seconds"] = round(time.perf_counter() - started, 1)
    document["load_average_end"] = report_mod.machine()["load_average"]
    return report_mod.finish(document)
