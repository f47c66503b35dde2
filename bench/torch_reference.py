"""PyTorch eager reference for the same network: the GPU ceiling when onnxruntime has no CUDA provider.

The GPU machines lent to this project carry PyTorch with CUDA but a CPU-only onnxruntime, so
``bench/gpu.sh`` measures DenseNet121 here in FP32 and FP16 (autocast) with CUDA events, beside whatever
ONNX Runtime providers it finds.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch

from cxr_triage.model.export import build_densenet121

logger = logging.getLogger(__name__)


def _time_cuda(
    model: torch.nn.Module, batch: torch.Tensor, runs: int, dtype: torch.dtype | None
) -> list[float]:
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            model(batch)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000.0)
    return times


def _time_cpu(model: torch.nn.Module, batch: torch.Tensor, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        begin = time.perf_counter()
        model(batch)
        times.append(time.perf_counter() - begin)
    return times


def torch_reference(
    *, input_size: int, batches: Sequence[int] = (1, 8, 32), runs: int = 20, warmup: int = 5
) -> list[dict[str, Any]]:
    """Images/s (median run) of the untrained DenseNet121, per device, precision and batch size."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    model = build_densenet121().to(device)
    precisions: list[tuple[str, torch.dtype | None]] = [("fp32", None)] + (
        [("fp16", torch.float16)] if cuda else []
    )
    results = []
    with torch.inference_mode():
        for name, dtype in precisions:
            for batch_size in batches:
                batch = torch.randn(batch_size, 3, input_size, input_size, device=device)
                if cuda:
                    _time_cuda(model, batch, warmup, dtype)
                    times = _time_cuda(model, batch, runs, dtype)
                else:
                    _time_cpu(model, batch, 1)
                    times = _time_cpu(model, batch, max(3, runs // 4))
                median = statistics.median(times)
                results.append(
                    {
                        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
                        "precision": name,
                        "batch": batch_size,
                        "runs": len(times),
                        "images_per_s": round(batch_size / median, 1),
                        "batch_ms_p50": round(median * 1000.0, 2),
                        "torch": torch.__version__,
                    }
                )
                logger.info("torch reference", extra=results[-1])
    return results
