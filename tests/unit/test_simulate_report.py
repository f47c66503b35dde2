"""``cxr-triage simulate report`` end to end on a small labelled folder: the served model scores it, both orders
read the same shifts, and the JSON, the Markdown table and the plot are written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from bench.simulate.cli import simulate
from bench.simulate.queueing import replayed_minutes
from bench.simulate.report import auroc, binormal_pool
from cxr_triage.labels import LABELS
from cxr_triage.model.repository import ensure_initial_model
from cxr_triage.settings import load_settings
from cxr_triage.sla import SlaPolicy
from producers.sample_images import write_samples

FIELDS = {
    "fifo_mean_wait_abnormal_min", "triage_mean_wait_abnormal_min", "reduction_abnormal",
    "fifo_mean_wait_normal_min", "triage_mean_wait_normal_min", "fifo_max_wait_min", "triage_max_wait_min",
    "fifo_p95_wait_abnormal_min", "triage_p95_wait_abnormal_min", "ci95", "model_version", "auroc",
}  # fmt: skip


def _labelled_folder(root: Path, n: int) -> Path:
    images = write_samples(root / "images", n=n)
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Path", *LABELS])
        for i, path in enumerate(images):
            abnormal = i % 2 == 0
            values = {label: "0" for label in LABELS} | {"No Finding": "0" if abnormal else "1"}
            if abnormal:
                values["Pleural Effusion"] = "1"
            writer.writerow([f"images/{path.name}", *(values[label] for label in LABELS)])
    return root


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A state home under ``tmp_path`` whose repository serves the untrained 64-px model."""
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CXR_INITIAL_MODEL_INPUT_SIZE", "64")
    ensure_initial_model(load_settings())


@pytest.mark.usefixtures("served")
def test_report_reads_the_served_model_and_writes_json_markdown_and_plot(tmp_path: Path) -> None:
    data = _labelled_folder(tmp_path / "data", 16)
    out = tmp_path / "report"
    args = ["report", "--data", str(data), "--runs", "4", "--studies", "60", "--prevalence", "0.3",
            "--out", str(out), "--json"]  # fmt: skip
    result = CliRunner().invoke(simulate, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert set(report) >= FIELDS and report["model_version"] == "1"
    assert report["scenario"]["radiologists"] == 2 and report["scenario"]["utilisation"] == 0.85
    low, high = report["ci95"]["fifo_abnormal"]["ci95_low"], report["ci95"]["fifo_abnormal"]["ci95_high"]
    assert low <= report["fifo_mean_wait_abnormal_min"] <= high
    assert json.loads((out / "report.json").read_text()) == report
    assert "| mean wait, abnormal (min) |" in (out / "report.md").read_text()
    with Image.open(out / "waits.png") as plot:
        assert plot.size[0] > 600
    curve = report["reduction_by_auroc"]
    assert [point["auroc"] for point in curve] == [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]
    assert (out / "reduction-by-auroc.png").is_file() and set(report["target"]) >= {"met", "auroc_needed"}


@pytest.mark.parametrize("target", [0.6, 0.8, 0.95])
def test_simulated_scores_have_the_auroc_asked_for(target: float) -> None:
    pool = binormal_pool(
        np.random.default_rng(3), target, n=4000, prevalence=0.3, tier_for=SlaPolicy().tier_for
    )
    measured = auroc(pool)
    assert measured is not None and abs(measured - target) < 0.02
    assert 0.25 < pool.abnormal.mean() < 0.35 and ((pool.priority >= 0) & (pool.priority <= 1)).all()


def test_without_a_served_model_the_report_says_what_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    data = _labelled_folder(tmp_path / "data", 4)
    result = CliRunner().invoke(simulate, ["report", "--data", str(data)])
    assert result.exit_code == 1 and "no model is served yet" in result.output


def test_replayed_timestamps_are_read_as_minutes_after_the_first() -> None:
    lines = ["arrived_at", "2026-12-03T08:10:00+00:00", "", "1796286600", "2026-12-03T08:00:00+00:00"]
    # 1796286600 s is 2026-12-03T08:30:00Z.
    assert replayed_minutes(lines).tolist() == [0.0, 10.0, 30.0]
    with pytest.raises(ValueError, match="without a time zone"):
        replayed_minutes(["2026-12-03T08:00:00", "2026-12-03T09:00:00"])
    with pytest.raises(ValueError, match="not a timestamp: 'later'"):
        replayed_minutes(["1796285400", "later"])
    with pytest.raises(ValueError, match="at least two"):
        replayed_minutes(["1796285400"])


@pytest.mark.usefixtures("served")
def test_a_replayed_day_sets_the_arrivals_and_the_reading_time_follows_from_utilisation(
    tmp_path: Path,
) -> None:
    data = _labelled_folder(tmp_path / "data", 8)
    day = tmp_path / "arrivals.txt"
    day.write_text("\n".join(str(1796284800 + 120 * i) for i in range(61)))  # one every 2 min for 2 h
    args = ["report", "--data", str(data), "--runs", "3", "--timestamps", str(day), "--utilization", "0.5",
            "--no-curve", "--out", str(tmp_path / "out"), "--json"]  # fmt: skip
    result = CliRunner().invoke(simulate, args)
    assert result.exit_code == 0, result.output
    scenario = json.loads(result.output[result.output.index("{") :])["scenario"]
    assert scenario["arrivals"] == "replayed (61 timestamps)" and scenario["rate_per_min"] == pytest.approx(
        0.5
    )
    assert scenario["mean_reading_min"] == pytest.approx(2.0)  # 0.5 x 2 radiologists / 0.5 per minute


@pytest.mark.usefixtures("served")
def test_the_aging_horizon_is_the_reports_to_vary_and_is_stated(tmp_path: Path) -> None:
    data = _labelled_folder(tmp_path / "data", 8)
    base = ["report", "--data", str(data), "--runs", "2", "--studies", "40", "--no-curve"]
    for value, horizon, said in (("none", None, "aging horizon none"), ("45", 45.0, "aging horizon 45 min")):
        out = tmp_path / f"out-{value}"
        result = CliRunner().invoke(
            simulate, [*base, "--aging-horizon-min", value, "--out", str(out), "--json"]
        )
        assert result.exit_code == 0, result.output
        report = json.loads(result.output[result.output.index("{") :])
        assert report["scenario"]["sla"]["aging_horizon_min"] == horizon
        assert said in (out / "report.md").read_text()
    refused = CliRunner().invoke(simulate, [*base, "--aging-horizon-min", "-3"])
    assert refused.exit_code == 2 and "minutes above 0, or 'none'" in refused.output
