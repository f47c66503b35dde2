"""Where the CPU went during a timed window: per stack component (its whole process tree) and the machine.

Linux only (``/proc``); elsewhere every figure is empty. Together with the worker's own metrics (time spent
waiting on Triton, batch sizes) this shows why the pipeline reaches the throughput it reaches.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from deploy.procs import PidFile

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+(?P<value>[-+0-9.eEinfNa]+)$")


@dataclass(frozen=True)
class CpuSnapshot:
    machine_busy_s: float
    per_component_s: dict[str, float]


def _process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, user + system CPU seconds) for every process now."""
    table: dict[int, tuple[int, float]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # exited meanwhile
            continue
        fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
        table[int(stat.parent.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS)
    return table


def _tree_seconds(table: Mapping[int, tuple[int, float]], root: int) -> float:
    children: dict[int, list[int]] = {}
    for pid, (parent, _cpu) in table.items():
        children.setdefault(parent, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            total += table[pid][1]
        todo.extend(children.get(pid, []))
    return total


def _machine_busy_seconds() -> float:
    stat = Path("/proc/stat")
    if not stat.is_file():
        return 0.0
    values = [int(v) for v in stat.read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values[:8]) - idle) / _TICKS


def component_pids(run_dir: Path) -> dict[str, int]:
    """The stack's components and their pids, from the pid files ``cxr-triage up`` writes."""
    pids: dict[str, int] = {}
    for path in sorted(run_dir.glob("*.pid")) if run_dir.is_dir() else []:
        record = PidFile(run_dir, path.stem).read()
        if record is not None:
            pids[path.stem] = record.pid
    return pids


def snapshot(roots: Mapping[str, int]) -> CpuSnapshot:
    table = _process_table() if Path("/proc").is_dir() else {}
    per = {name: _tree_seconds(table, pid) for name, pid in roots.items()}
    return CpuSnapshot(_machine_busy_seconds(), per)


def cpu_breakdown(before: CpuSnapshot, after: CpuSnapshot, *, window_s: float) -> dict[str, object]:
    """CPU-seconds per component over the window, the rest of the machine, and the capacity it had."""
    used = {
        name: round(after.per_component_s.get(name, 0.0) - value, 2)
        for name, value in before.per_component_s.items()
    }
    busy = round(after.machine_busy_s - before.machine_busy_s, 2)
    cores = os.cpu_count() or 1
    return {
        "window_s": round(window_s, 2),
        "capacity_cpu_s": round(cores * window_s, 2),
        "machine_busy_cpu_s": busy,
        "per_component_cpu_s": used,
        "outside_stack_cpu_s": round(busy - sum(used.values()), 2),
    }


WORKER_SAMPLES = (
    "cxr_worker_triton_latency_seconds_sum",
    "cxr_worker_triton_latency_seconds_count",
    "cxr_worker_batch_size_sum",
    "cxr_worker_batch_size_count",
)


def worker_activity(
    before: Mapping[str, float], after: Mapping[str, float], *, window_s: float
) -> dict[str, float]:
    """From the workers' metrics: batches, mean batch size, and the share of the window spent inside Triton."""
    delta = {name: after.get(name, 0.0) - before.get(name, 0.0) for name in WORKER_SAMPLES}
    batches = delta["cxr_worker_batch_size_count"]
    triton_s = delta["cxr_worker_triton_latency_seconds_sum"]
    return {
        "batches": batches,
        "mean_batch_size": round(delta["cxr_worker_batch_size_sum"] / batches, 2) if batches else 0.0,
        "triton_calls": delta["cxr_worker_triton_latency_seconds_count"],
        "triton_busy_s": round(triton_s, 3),
        "triton_share_of_window": round(triton_s / window_s, 3) if window_s > 0 else 0.0,
    }


def scrape(url: str, names: tuple[str, ...], timeout_s: float = 5.0) -> dict[str, float]:
    """Summed values of the named Prometheus samples at ``url`` (labels ignored); missing names left out."""
    try:
        text = httpx.get(url, timeout=timeout_s).raise_for_status().text
    except httpx.HTTPError:
        return {}
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if match and match["name"] in names:
            values[match["name"]] = values.get(match["name"], 0.0) + float(match["value"])
    return values
