"""``cxr-triage simulate live`` against the real stack: studies sent, scored, read by simulated radiologists
whose verdicts (from the images' labels) reach ``cxr.verdicts.v1``; a study it has no truth for is left
unread and given back."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer

from bench.simulate.cli import simulate
from cxr_triage import topics
from cxr_triage.events import VerdictEventV1
from cxr_triage.labels import LABELS
from producers.sample_images import write_samples
from tests.factories import png_bytes
from tests.integration.conftest import Stack
from tests.integration.kafka_support import assign_from_start

pytestmark = pytest.mark.integration


def chexpert_folder(root: Path, n: int) -> Path:
    """``n`` synthetic radiographs, even ones normal (No Finding) and odd ones with cardiomegaly."""
    paths = write_samples(root / "images", n=n)
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Path", "Frontal/Lateral", *LABELS, "patient_id"])
        for i, path in enumerate(paths):
            labels = {label: "" for label in LABELS} | (
                {"No Finding": "1"} if i % 2 == 0 else {"No Finding": "0", "Cardiomegaly": "1"}
            )
            writer.writerow([f"images/{path.name}", "Frontal", *labels.values(), f"p{i}"])
    return root


def _unread(stack: Stack) -> int:
    headers = {"Authorization": f"Bearer {stack.token()}"}
    response = httpx.get(f"{stack.api_url}/worklist", params={"limit": 1}, headers=headers, timeout=10)
    response.raise_for_status()
    return int(response.json()["total"])


def _verdicts(stack: Stack) -> list[VerdictEventV1]:
    consumer = Consumer(
        {"bootstrap.servers": stack.env["CXR_KAFKA_BOOTSTRAP_SERVERS"], "group.id": "test-sim-verdicts"}
    )
    assign_from_start(consumer, topics.VERDICTS)
    found, idle_until = [], time.monotonic() + 5
    try:
        while time.monotonic() < idle_until:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None and message.value():
                found.append(VerdictEventV1.model_validate_json(message.value()))
                idle_until = time.monotonic() + 3
    finally:
        consumer.close()
    return found


def test_simulated_radiologists_read_every_study_sent_and_give_back_what_they_cannot_judge(
    stack: Stack, tmp_path: Path
) -> None:
    # A study the simulator has no truth for (not an image of its folder): held while the run lasts, then
    # released, never given a made-up verdict.
    stranger = tmp_path / "stranger.png"
    stranger.write_bytes(png_bytes(seed=4242))
    stack.cli("produce", str(stranger))
    deadline = time.monotonic() + 120
    while _unread(stack) == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    unread_before = _unread(stack)
    assert unread_before >= 1

    data = chexpert_folder(tmp_path / "data", 6)
    args = ["live", "--data", str(data), "--pattern", "burst", "--studies", "8", "--burst", "4"]
    args += ["--gap-s", "2", "--radiologists", "2", "--mean-reading-min", "1", "--speed", "300"]
    result = CliRunner().invoke(
        simulate, [*args, "--timeout-s", "300", "--json"], env=stack.env, catch_exceptions=False
    )

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert (summary["studies_sent"], summary["studies_scored"], summary["studies_read"]) == (8, 8, 8)
    assert summary["held_unread"] == unread_before and summary["errors"] == {}
    assert summary["e2e_latency_s"]["n"] == 8 and summary["e2e_latency_s"]["p50"] > 0
    by_truth = summary["time_to_read_s"]["by_truth"]
    assert by_truth["abnormal"].get("n", 0) + by_truth["normal"].get("n", 0) == 8
    assert sum(stats["n"] for stats in summary["time_to_read_s"]["by_tier"].values()) == 8
    assert _unread(stack) == unread_before  # the stranger is back on the worklist, unread

    ours = [v for v in _verdicts(stack) if v.radiologist.startswith("sim-reader-")]
    assert len(ours) == 8 and {v.radiologist for v in ours} <= {"sim-reader-1", "sim-reader-2"}
    normal = [v for v in ours if v.labels["No Finding"] == 1]
    assert len(normal) == by_truth["normal"].get("n", 0)
    assert all(v.labels["Cardiomegaly"] == 0 and sum(v.labels.values()) == 1 for v in normal)
    assert all(v.labels["Cardiomegaly"] == 1 and v.labels["No Finding"] == 0 for v in ours if v not in normal)
