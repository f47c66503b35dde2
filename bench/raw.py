"""Raw ONNX Runtime: sessions configured like the served model, and timed runs bounded in count and time."""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bench.samples import batch_of
from bench.stats import LatencySummary, summarise_ms
from cxr_triage.model.export import INPUT_NAME

logger = logging.getLogger(__name__)

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def default_threads() -> int:
    return os.cpu_count() or 1


def resolve_providers(choice: str) -> list[str]:
    """``cpu`` (default), ``auto`` (TensorRT, CUDA when this onnxruntime has them, then CPU) or a comma list."""
    available = ort.get_available_providers()
    if choice in ("", "cpu"):
        return ["CPUExecutionProvider"]
    if choice == "auto":
        return [name for name in (*GPU_PROVIDERS, "CPUExecutionProvider") if name in available]
    wanted = [name.strip() for name in choice.split(",") if name.strip()]
    missing = [name for name in wanted if name not in available]
    if missing:
        raise ValueError(f"execution providers {missing} are not in this onnxruntime build ({available})")
    return wanted


def make_session(
    path: Path,
    *,
    threads: int,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    profile_prefix: str | None = None,
) -> ort.InferenceSession:
    """A session set up like the Triton runner's: ``threads`` intra-op, 1 inter-op, all graph optimisations."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # ORT's own warnings (e.g. about QDQ on CPU) are not results
    # As the Triton runner is configured (allow_spinning "0"): idle threads sleep, so CPU time is work done.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))


@dataclass(frozen=True)
class Timing:
    durations: list[float]  # wall seconds per run
    cpu_s: float  # this process's CPU seconds over the runs (all threads)
    images: int


@dataclass(frozen=True)
class RawResult:
    """Throughput of one model at one batch size; ``images_per_s`` is from the median batch time."""

    variant: str
    batch: int
    runs: int
    images_per_s: float
    mean_images_per_s: float
    best_images_per_s: float
    batch_latency: LatencySummary
    providers: list[str]
    cpu_ms_per_image: float | None = None  # process CPU time per image: insensitive to other load

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "batch_latency": self.batch_latency.as_dict()}


def time_runs(
    session: ort.InferenceSession,
    batch: np.ndarray,
    *,
    min_runs: int = 3,
    max_runs: int = 100,
    max_seconds: float = 10.0,
    warmup: int = 1,
) -> list[float]:
    """Seconds per ``session.run`` on ``batch``: at least ``min_runs``, then until ``max_seconds`` or ``max_runs``."""
    feeds = {INPUT_NAME: batch}
    for _ in range(warmup):
        session.run(None, feeds)
    durations: list[float] = []
    started = time.perf_counter()
    while len(durations) < max_runs and (
        len(durations) < min_runs or time.perf_counter() - started < max_seconds
    ):
        begin = time.perf_counter()
        session.run(None, feeds)
        durations.append(time.perf_counter() - begin)
    return durations


def measure(session: ort.InferenceSession, batch: np.ndarray, *, max_seconds: float) -> Timing:
    """``time_runs`` plus the CPU time it cost this process."""
    session.run(None, {INPUT_NAME: batch})  # warm-up outside the CPU count
    cpu = time.process_time()
    durations = time_runs(session, batch, max_seconds=max_seconds, warmup=0)
    return Timing(durations, time.process_time() - cpu, len(durations) * len(batch))


def result_from(
    variant: str, batch: int, durations: Sequence[float], providers: list[str], *, cpu: Sequence[Timing] = ()
) -> RawResult:
    images = sum(t.images for t in cpu)
    cpu_ms = round(1000.0 * sum(t.cpu_s for t in cpu) / images, 1) if images else None
    return RawResult(
        variant=variant,
        batch=batch,
        runs=len(durations),
        images_per_s=round(batch / statistics.median(durations), 1),
        mean_images_per_s=round(batch * len(durations) / sum(durations), 1),
        best_images_per_s=round(batch / min(durations), 1),
        batch_latency=summarise_ms(durations),
        providers=providers,
        cpu_ms_per_image=cpu_ms,
    )


def raw_bench(
    model_path: Path,
    tensors: np.ndarray,
    *,
    batches: Sequence[int] = (1, 8, 32),
    threads: int,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    max_seconds: float = 10.0,
    variant: str = "fp32",
) -> list[RawResult]:
    """Images/s of ``model_path`` at each batch size, on real preprocessed images."""
    session = make_session(model_path, threads=threads, providers=providers)
    used = session.get_providers()
    results = []
    for batch in batches:
        timing = measure(session, batch_of(tensors, batch), max_seconds=max_seconds)
        result = result_from(variant, batch, timing.durations, used, cpu=[timing])
        logger.info(
            "raw onnxruntime",
            extra={
                "variant": variant,
                "batch": batch,
                "images_per_s": result.images_per_s,
                "runs": result.runs,
            },
        )
        results.append(result)
    return results


def interleaved_runs(
    sessions: Mapping[str, ort.InferenceSession],
    batch: np.ndarray,
    *,
    rounds: int = 12,
    max_seconds: float = 20.0,
) -> dict[str, list[float]]:
    """Alternate the sessions run by run, so that load from other processes hits each of them alike."""
    feeds = {INPUT_NAME: batch}
    for session in sessions.values():
        session.run(None, feeds)
    durations: dict[str, list[float]] = {name: [] for name in sessions}
    started = time.perf_counter()
    for done in range(rounds):
        if done >= 3 and time.perf_counter() - started > max_seconds:
            break
        for name, session in sessions.items():
            begin = time.perf_counter()
            session.run(None, feeds)
            durations[name].append(time.perf_counter() - begin)
    return durations
