"""Benchmark results: pipeline accounting (lost, duplicated, latencies), the issue's JSON keys, the report."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bench import report
from bench.cpu import WORKER_SAMPLES, CpuSnapshot, cpu_breakdown, scrape, worker_activity
from bench.pipeline import PipelineResult, Published, summarise
from bench.profile import aggregate_profile
from bench.raw import Timing, result_from
from bench.suite import pipeline_summary
from cxr_triage.events import PredictionEventV1
from cxr_triage.labels import LABELS
from cxr_triage.settings import Settings
from tests.conftest import PIPELINE_JSON_KEYS as REQUIRED_KEYS

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _prediction(study_id: str, version: str = "1") -> PredictionEventV1:
    return PredictionEventV1(
        study_id=study_id,
        model_name="cxr_classifier",
        model_version=version,
        probabilities=dict.fromkeys(LABELS, 0.5),
        priority=0.5,
        received_at=T0,
        scored_at=T0,
    )


def _published(index: int) -> Published:
    received = T0 + timedelta(seconds=index)
    return Published(f"s{index}", received, received.timestamp())


def _result() -> PipelineResult:
    published = [_published(i) for i in range(4)]
    seen = {f"s{i}": T0.timestamp() + i + 0.5 for i in range(3)}  # s3 never reached the worklist
    scored = {f"s{i}": T0.timestamp() + i + 0.2 for i in range(3)}
    predictions = [
        (_prediction("s0"), T0.timestamp() + 0.3),
        (_prediction("s1"), T0.timestamp() + 1.4),
        (_prediction("s1"), T0.timestamp() + 9.0),  # a replay: same study, same version
        (_prediction("s2", "2"), T0.timestamp() + 2.1),
        (_prediction("s2", "1"), T0.timestamp() + 2.6),  # another version: not a duplicate
        (_prediction("other"), T0.timestamp() + 1.0),
    ]
    return summarise(
        published,
        seen,
        scored,
        [p for p in predictions if p[0].study_id != "other"],
        settings=Settings(),
        pattern="burst",
        rate_per_s=2.0,
        input_size=224,
    )


def test_pipeline_accounting() -> None:
    result = _result()
    assert result.n == 4 and result.written == 3
    assert result.lost == 1 and result.lost_ids == ["s3"]
    assert result.duplicated == 1
    assert result.rate_per_s is None
    # write time = the first prediction's Kafka timestamp: 0.3, 0.4 and 0.1 s after each study arrived
    assert result.e2e is not None and result.e2e_scored is not None
    assert result.e2e.p50_ms == pytest.approx(300.0)
    assert result.e2e.max_ms == pytest.approx(400.0)
    assert result.e2e_scored.p50_ms == pytest.approx(200.0)
    assert result.seconds == pytest.approx(2.1)
    assert result.studies_per_s == pytest.approx(3 / 2.1, abs=0.01)
    assert result.model_versions == ["1", "2"]


def test_pipeline_json_has_the_issue_keys() -> None:
    raw = result_from("fp32", 8, [0.4, 0.5, 0.6], ["CPUExecutionProvider"])
    assert raw.images_per_s == 16.0 and raw.best_images_per_s == 20.0
    summary = pipeline_summary(raw, _result(), model_version="1", variant="fp32")
    assert set(summary) >= REQUIRED_KEYS
    assert summary["ratio"] == round(summary["pipeline_studies_per_s"] / 16.0, 3)
    json.dumps(summary)  # serialisable as printed by --json


def test_profile_aggregation_skips_the_warm_up_run() -> None:
    events = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
        {"cat": "Node", "name": "conv_kernel_time", "ts": 10, "dur": 90, "args": {"op_name": "Conv"}},
        {"cat": "Session", "name": "model_run", "ts": 200, "dur": 50},
        {"cat": "Node", "name": "conv_kernel_time", "ts": 210, "dur": 3000, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "cat_kernel_time", "ts": 240, "dur": 1000, "args": {"op_name": "Concat"}},
        {"cat": "Node", "name": "cat_fence_before", "ts": 240, "dur": 5, "args": {"op_name": "Concat"}},
        {"cat": "Session", "name": "model_run", "ts": 300, "dur": 50},
        {"cat": "Node", "name": "conv_kernel_time", "ts": 310, "dur": 5000, "args": {"op_name": "Conv"}},
    ]
    ops = aggregate_profile(events)
    assert [op.op_type for op in ops] == ["Conv", "Concat"]
    assert ops[0].ms_per_run == pytest.approx(4.0) and ops[0].nodes == 1
    assert ops[1].ms_per_run == pytest.approx(0.5) and ops[0].share == pytest.approx(0.889, abs=1e-3)
    assert aggregate_profile([]) == []


def _document() -> dict[str, object]:
    speed = [
        {
            "batch": 1,
            "fp32_images_per_s": 20,
            "int8_images_per_s": 40,
            "speedup": 2.0,
            "best_speedup": 2.1,
            "rounds": 12,
        },
        {
            "batch": 8,
            "fp32_images_per_s": 25,
            "int8_images_per_s": 35,
            "speedup": 1.4,
            "best_speedup": 1.6,
            "rounds": 12,
        },
    ]
    return {
        "generated_at": "2026-01-01T00:00:00+00:00",
        "machine": {"cpu": "test cpu", "cores": 2, "onnxruntime": "1.32.0", "load_average": [1.0, 1.0, 1.0]},
        "model": {
            "name": "cxr_classifier",
            "version": "1",
            "input_size": 224,
            "weights": "untrained-random-init",
            "threads": 2,
        },
        "summary": {"ratio": 0.9, "pipeline_studies_per_s": 22.5, "raw_images_per_s": 25.0},
        "pipeline": {
            "steady": {
                "n": 10,
                "rate_per_s": 2.0,
                "studies_per_s": 2.0,
                "lost": 0,
                "duplicated": 0,
                "model_versions": ["1"],
                "e2e": {"p50_ms": 100.0, "p95_ms": 300.0, "p99_ms": 1200.0},
            },
        },
        "int8": {
            "speed": speed,
            "auroc_diff": 0.001,
            "auroc_fp32": 0.55,
            "auroc_int8": 0.551,
            "calibration_images": 64,
            "evaluation_images": 470,
            "positives": 412,
            "labelled": 470,
            "max_abs_diff": 0.02,
            "mean_abs_diff": 0.002,
            "batchnorms_rewritten": 62,
            "quantize_seconds": 7.0,
            "weights": "untrained-random-init",
        },
    }


def test_targets_are_judged_against_the_issue() -> None:
    verdicts = {t.name: t.met for t in report.evaluate_targets(_document())}
    assert verdicts == {
        "pipeline burst throughput / raw ORT batch throughput": True,
        "e2e p99 at a steady 2.0 studies/s": False,
        "INT8 speed-up over FP32 (every batch size)": False,  # batch 8 is only 1.4x
        "INT8 abnormal-vs-normal AUROC difference": True,
    }


def test_report_files(tmp_path: Path) -> None:
    document = report.finish(_document())
    json_path, md_path = report.write(document, tmp_path / "bench")
    assert json.loads(json_path.read_text())["targets"] == document["targets"]
    markdown = md_path.read_text()
    assert markdown.startswith("# Inference benchmark")
    assert "| target | wanted | measured | met |" in markdown
    assert "untrained-random-init" in markdown and "*difference*" in markdown
    assert "## 4. FP32 vs INT8" in markdown and "## 3. Full pipeline" in markdown
    assert "**no**" in markdown


def test_cpu_and_worker_accounting() -> None:
    before = CpuSnapshot(machine_busy_s=100.0, per_component_s={"triton": 10.0, "worker-0": 2.0})
    after = CpuSnapshot(machine_busy_s=106.0, per_component_s={"triton": 13.5, "worker-0": 2.5})
    breakdown = cpu_breakdown(before, after, window_s=4.0)
    assert breakdown["per_component_cpu_s"] == {"triton": 3.5, "worker-0": 0.5}
    assert breakdown["machine_busy_cpu_s"] == 6.0 and breakdown["outside_stack_cpu_s"] == 2.0

    metrics_before = dict.fromkeys(WORKER_SAMPLES, 0.0)
    metrics_after = {
        "cxr_worker_triton_latency_seconds_sum": 3.0,
        "cxr_worker_triton_latency_seconds_count": 8.0,
        "cxr_worker_batch_size_sum": 64.0,
        "cxr_worker_batch_size_count": 8.0,
    }
    activity = worker_activity(metrics_before, metrics_after, window_s=4.0)
    assert activity["mean_batch_size"] == 8.0 and activity["triton_share_of_window"] == 0.75


def test_cpu_efficiency_compares_cpu_per_image() -> None:
    timing = Timing(durations=[0.5, 0.5], cpu_s=1.6, images=16)
    raw = result_from("fp32", 8, timing.durations, ["CPUExecutionProvider"], cpu=[timing])
    assert raw.cpu_ms_per_image == 100.0
    result = replace(_result(), cpu={"per_component_cpu_s": {"triton": 0.3, "worker-0": 0.075}})
    summary = pipeline_summary(raw, result, model_version="1", variant="fp32")
    assert summary["stack_cpu_ms_per_study"] == 125.0  # 0.375 CPU-s over 3 written studies
    assert summary["cpu_efficiency"] == 0.8


def test_prometheus_text_is_summed_over_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (
        "# HELP cxr_worker_batch_size_sum x\n"
        'cxr_worker_batch_size_sum{worker="0"} 12.0\n'
        'cxr_worker_batch_size_sum{worker="1"} 4.0\n'
        "cxr_worker_batch_size_count 3\n"
        "other_metric 9\n"
    )

    class _Response:
        def __init__(self) -> None:
            self.text = text

        def raise_for_status(self) -> _Response:
            return self

    monkeypatch.setattr("bench.cpu.httpx.get", lambda *_a, **_k: _Response())
    assert scrape("http://127.0.0.1:1/metrics", WORKER_SAMPLES) == {
        "cxr_worker_batch_size_sum": 16.0,
        "cxr_worker_batch_size_count": 3.0,
    }
