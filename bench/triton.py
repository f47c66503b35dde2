"""Triton over gRPC at a fixed concurrency: closed-loop clients, each with its own channel, on loopback."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from bench.samples import batch_of
from bench.stats import LatencySummary, rate, summarise_ms
from cxr_triage.model.export import INPUT_NAME, OUTPUT_NAME

logger = logging.getLogger(__name__)


class TritonNotReady(RuntimeError):
    """The model did not become ready in time."""


@dataclass(frozen=True)
class TritonResult:
    concurrency: int
    batch: int
    requests: int
    errors: int
    seconds: float
    images_per_s: float
    latency: LatencySummary

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "latency": self.latency.as_dict()}


def wait_until_ready(
    url: str, model_name: str, *, timeout_s: float = 120.0, version: str | None = None
) -> str:
    """Block until ``model_name`` (``version`` if given) is ready on ``url``; return the newest ready version."""
    client = grpcclient.InferenceServerClient(url=url)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            try:
                if client.is_model_ready(model_name, model_version=version or "", client_timeout=5.0):
                    versions = client.get_model_metadata(model_name, client_timeout=5.0).versions
                    newest = sorted(versions, key=lambda v: int(v) if v.isdigit() else -1)[-1]
                    if version is None or newest == version:
                        return newest
            except InferenceServerException:
                pass
            time.sleep(0.5)
    finally:
        client.close()
    raise TritonNotReady(f"model {model_name!r} not ready on {url} after {timeout_s:.0f}s")


def _request(batch: np.ndarray) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput(INPUT_NAME, list(batch.shape), "UINT8")
    tensor.set_data_from_numpy(batch)
    return [tensor]


def run_level(
    url: str,
    model_name: str,
    batch: np.ndarray,
    *,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
) -> TritonResult:
    """``concurrency`` clients send ``batch`` back to back until ``max_requests`` in all or ``max_seconds``."""
    clients = [grpcclient.InferenceServerClient(url=url) for _ in range(concurrency)]
    outputs = [grpcclient.InferRequestedOutput(OUTPUT_NAME)]
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    issued = 0
    start = threading.Barrier(concurrency + 1)
    deadline = 0.0

    def take_ticket() -> bool:
        nonlocal issued
        with lock:
            if issued >= max_requests or time.perf_counter() > deadline:
                return False
            issued += 1
            return True

    def client_loop(client: grpcclient.InferenceServerClient) -> None:
        inputs = _request(batch)
        start.wait()
        while take_ticket():
            begin = time.perf_counter()
            try:
                client.infer(model_name, inputs=inputs, outputs=outputs, client_timeout=60.0)
            except InferenceServerException as exc:
                with lock:
                    errors.append(str(exc))
                continue
            elapsed = time.perf_counter() - begin
            with lock:
                latencies.append(elapsed)

    threads = [threading.Thread(target=client_loop, args=(client,), daemon=True) for client in clients]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    deadline = began + max_seconds
    start.wait()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    for client in clients:
        client.close()
    if errors:
        logger.warning("triton requests failed", extra={"errors": len(errors), "first": errors[0]})
    if not latencies:
        raise TritonNotReady(f"no request succeeded at concurrency {concurrency}: {errors[:1]}")
    return TritonResult(
        concurrency=concurrency,
        batch=len(batch),
        requests=len(latencies),
        errors=len(errors),
        seconds=round(seconds, 2),
        images_per_s=round(rate(len(latencies) * len(batch), seconds), 1),
        latency=summarise_ms(latencies),
    )


def triton_bench(
    url: str,
    model_name: str,
    tensors: np.ndarray,
    *,
    concurrencies: Sequence[int] = (1, 4, 8),
    batches: Sequence[int] = (1,),
    max_requests: int = 200,
    max_seconds: float = 10.0,
    warmup_requests: int = 3,
) -> list[TritonResult]:
    """One ``run_level`` per (batch, concurrency), after a few warm-up requests."""
    wait_until_ready(url, model_name)
    results = []
    for batch_size in batches:
        batch = batch_of(tensors, batch_size)
        run_level(url, model_name, batch, concurrency=1, max_requests=warmup_requests, max_seconds=30.0)
        for concurrency in concurrencies:
            result = run_level(
                url,
                model_name,
                batch,
                concurrency=concurrency,
                max_requests=max_requests,
                max_seconds=max_seconds,
            )
            logger.info(
                "triton grpc",
                extra={
                    "batch": batch_size,
                    "concurrency": concurrency,
                    "images_per_s": result.images_per_s,
                    "p99_ms": result.latency.p99_ms,
                },
            )
            results.append(result)
    return results
