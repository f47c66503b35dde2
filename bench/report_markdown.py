"""The benchmark report as a Markdown page: one section (a table or two) per part of ``bench.report``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return [*lines, ""]


def _raw_section(raw: list[dict[str, Any]]) -> list[str]:
    rows = [
        [
            r["variant"],
            r["batch"],
            r["images_per_s"],
            r["mean_images_per_s"],
            r["best_images_per_s"],
            r["batch_latency"]["p50_ms"],
            r["runs"],
            ", ".join(r["providers"]),
        ]
        for r in raw
    ]
    return [
        "## 1. Raw ONNX Runtime",
        "",
        *_table(
            [
                "model",
                "batch",
                "images/s (median)",
                "images/s (mean)",
                "images/s (best)",
                "batch p50 ms",
                "runs",
                "providers",
            ],
            rows,
        ),
    ]


def _triton_section(triton: list[dict[str, Any]]) -> list[str]:
    rows = [
        [
            t["batch"],
            t["concurrency"],
            t["images_per_s"],
            t["latency"]["p50_ms"],
            t["latency"]["p99_ms"],
            t["requests"],
            t["errors"],
        ]
        for t in triton
    ]
    return [
        "## 2. Triton over gRPC (closed loop, loopback)",
        "",
        *_table(["batch", "concurrency", "images/s", "p50 ms", "p99 ms", "requests", "errors"], rows),
    ]


def _pipeline_section(pipeline: Mapping[str, Any]) -> list[str]:
    rows = []
    for name, p in pipeline.items():
        e2e = p.get("e2e") or {}
        rate = f"{p['rate_per_s']}/s" if p.get("rate_per_s") else "all at once"
        rows.append(
            [
                name,
                p.get("variant", "fp32"),
                p["n"],
                rate,
                p["studies_per_s"],
                p.get("raw_images_per_s", ""),
                "n/a (paced)" if p.get("rate_per_s") else p.get("ratio", ""),
                "n/a (paced)" if p.get("rate_per_s") else p.get("cpu_efficiency", ""),
                e2e.get("p50_ms"),
                e2e.get("p95_ms"),
                e2e.get("p99_ms"),
                p["lost"],
                p["duplicated"],
                ", ".join(p["model_versions"]),
            ]
        )
    header = [
        "run",
        "model",
        "studies",
        "arrival",
        "studies/s",
        "raw ORT images/s (batch 8, before+after)",
        "ratio",
        "CPU efficiency",
        "e2e p50 ms",
        "e2e p95 ms",
        "e2e p99 ms",
        "lost",
        "duplicated",
        "model version",
    ]
    return [
        "## 3. Full pipeline (producer -> Kafka -> worker -> Triton -> Redis + predictions topic)",
        "",
        *_table(header, rows),
        "`ratio` = studies/s / raw ORT images/s timed just before and just after the run on the same file. "
        "`CPU efficiency` = raw ORT CPU time per image / CPU time of the whole stack (Kafka, Redis, Triton, "
        "worker, producer) per study: what the ratio would approach on an idle machine, and unlike "
        "wall-clock figures it does not move with other load.",
        "",
    ]


def _cpu_section(pipeline: Mapping[str, Any]) -> list[str]:
    runs = {name: p for name, p in pipeline.items() if p.get("cpu")}
    if not runs:
        return []
    components = sorted({c for p in runs.values() for c in p["cpu"]["per_component_cpu_s"]})
    header = [
        "pattern",
        "window s",
        "capacity CPU-s",
        "machine busy CPU-s",
        *components,
        "outside the stack",
        "worker time inside Triton",
        "mean batch",
    ]
    rows = []
    for name, p in runs.items():
        cpu, worker = p["cpu"], p.get("worker", {})
        rows.append(
            [
                name,
                cpu["window_s"],
                cpu["capacity_cpu_s"],
                cpu["machine_busy_cpu_s"],
                *(cpu["per_component_cpu_s"].get(c, "") for c in components),
                cpu["outside_stack_cpu_s"],
                f"{100 * worker.get('triton_share_of_window', 0):.0f}%",
                worker.get("mean_batch_size", ""),
            ]
        )
    return [
        "Where the CPU went during each pipeline run (CPU-seconds from /proc, each component with its child "
        "processes: Triton's includes the Python-backend stub that runs ONNX Runtime; `bench` is the producer "
        "and the Redis poller; the worker's time inside Triton is from its own metrics):",
        "",
        *_table(header, rows),
    ]


def _profile_rows(ops: list[dict[str, Any]]) -> list[list[Any]]:
    return [[op["op_type"], op["nodes"], op["ms_per_run"], f"{100 * op['share']:.1f}%"] for op in ops]


def _int8_section(int8: Mapping[str, Any]) -> list[str]:
    speed_rows = [
        [
            p["batch"],
            p["fp32_images_per_s"],
            p["int8_images_per_s"],
            p["speedup"],
            p["best_speedup"],
            p.get("no_rewrite_images_per_s") or "",
            p.get("no_rewrite_speedup") or "",
            p["rounds"],
        ]
        for p in int8["speed"]
    ]
    lines = ["## 4. FP32 vs INT8 (static QDQ, per-channel, calibrated on real radiographs)", ""]
    lines += _table(
        [
            "batch",
            "FP32 images/s",
            "INT8 images/s",
            "speed-up (median of pairs)",
            "speed-up (best vs best)",
            "INT8, BatchNorms left in float: images/s",
            "its speed-up",
            "rounds",
        ],
        speed_rows,
    )
    lines += _table(
        ["", "value"],
        [
            [
                "calibration images / evaluation images",
                f"{int8['calibration_images']} / {int8['evaluation_images']}",
            ],
            ["labelled abnormal / normal", f"{int8['positives']} / {int8['labelled'] - int8['positives']}"],
            ["max / mean abs probability difference", f"{int8['max_abs_diff']} / {int8['mean_abs_diff']}"],
            ["AUROC FP32 / INT8 (score 1 - p(No Finding))", f"{int8['auroc_fp32']} / {int8['auroc_int8']}"],
            ["AUROC difference", int8["auroc_diff"]],
            ["BatchNormalization nodes rewritten as depthwise Conv", int8["batchnorms_rewritten"]],
            ["quantisation time", f"{int8['quantize_seconds']} s"],
        ],
    )
    if int8.get("weights", "").startswith("untrained"):
        lines += [
            f"The model's weights are **{int8['weights']}**: its AUROC is near 0.5 by construction and means "
            "nothing clinically. Only the FP32-INT8 *difference* (on the same images, same labels) is "
            "meaningful here; re-run `cxr-triage bench int8` once the trainer has produced real weights.",
            "",
        ]
    if int8.get("profile_fp32") and int8.get("profile_int8"):
        lines += ["Per-operator kernel time (ONNX Runtime profiler, batch 8, one run, same machine):", ""]
        lines += [
            "FP32:",
            "",
            *_table(["operator", "nodes", "ms", "share"], _profile_rows(int8["profile_fp32"])),
        ]
        lines += [
            "INT8:",
            "",
            *_table(["operator", "nodes", "ms", "share"], _profile_rows(int8["profile_int8"])),
        ]
    return lines


def render_markdown(report: Mapping[str, Any]) -> str:
    m = report.get("machine", {})
    model = report.get("model", {})
    lines = [
        "# Inference benchmark",
        "",
        f"Generated {report.get('generated_at', '?')} by `{report.get('command', 'cxr-triage bench all')}` in "
        f"{report.get('seconds', '?')} s, all sections in one run on one machine: {m.get('cpu', '?')}, "
        f"{m.get('cores', '?')} cores, onnxruntime {m.get('onnxruntime', '?')}. Load average at the start "
        f"{m.get('load_average', '?')}, at the end {report.get('load_average_end', '?')} (other work on the "
        "machine slows every number here; medians are reported to damp it).",
        "",
        f"Model: `{model.get('name', '?')}` version {model.get('version', '?')} ({model.get('weights', '?')}), "
        f"input {model.get('input_size', '?')}x{model.get('input_size', '?')}, the same ONNX file for every "
        f"section; ONNX Runtime with {model.get('threads', '?')} intra-op threads (as the Triton runner).",
        "",
    ]
    if report.get("targets"):
        lines += ["## Targets", ""]
        lines += _table(
            ["target", "wanted", "measured", "met"],
            [
                [t["name"], t["target"], t["measured"], "yes" if t["met"] else "**no**"]
                for t in report["targets"]
            ],
        )
    if report.get("raw"):
        lines += _raw_section(report["raw"])
    if report.get("triton"):
        lines += _triton_section(report["triton"])
    if report.get("pipeline"):
        lines += _pipeline_section(report["pipeline"])
        lines += _cpu_section(report["pipeline"])
    if report.get("int8"):
        lines += _int8_section(report["int8"])
    if report.get("notes"):
        lines += ["## Notes", ""] + [f"- {note}" for note in report["notes"]] + [""]
    return "\n".join(lines).rstrip() + "\n"
