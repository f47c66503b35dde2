"""Per-operator time from ONNX Runtime's profiler: where a model's time goes on this machine."""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.raw import make_session
from cxr_triage.model.export import INPUT_NAME


@dataclass(frozen=True)
class OpTime:
    op_type: str
    ms_per_run: float
    share: float  # of the summed kernel time
    nodes: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def aggregate_profile(events: list[dict[str, Any]]) -> list[OpTime]:
    """Kernel time per operator type and run from a Chrome-trace profile, the first (warm-up) run left out."""
    run_events = sorted(
        (e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
        key=lambda e: float(e["ts"]),
    )
    if not run_events:
        return []
    skip_before = float(run_events[0]["ts"]) + float(run_events[0]["dur"]) if len(run_events) > 1 else 0.0
    runs = max(len(run_events) - 1, 1)
    total_us: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        if float(event.get("ts", 0)) < skip_before:
            continue
        op = str(event.get("args", {}).get("op_name", "?"))
        total_us[op] += float(event.get("dur", 0))
        count[op] += 1
    grand = sum(total_us.values()) or 1.0
    ops = [
        OpTime(op, round(us / runs / 1000.0, 2), round(us / grand, 3), count[op] // runs)
        for op, us in total_us.items()
    ]
    return sorted(ops, key=lambda op: op.ms_per_run, reverse=True)


def profile_ops(model_path: Path, batch: np.ndarray, *, threads: int, runs: int = 3) -> list[OpTime]:
    """Run ``batch`` once to warm up, then ``runs`` times with profiling on; per-operator kernel times."""
    with tempfile.TemporaryDirectory(prefix="cxr-profile-") as scratch:
        session = make_session(model_path, threads=threads, profile_prefix=str(Path(scratch) / "ort"))
        feeds = {INPUT_NAME: batch}
        session.run(None, feeds)
        for _ in range(runs):
            session.run(None, feeds)
        trace = Path(session.end_profiling())
        events: list[dict[str, Any]] = json.loads(trace.read_text())
    return aggregate_profile(events)
