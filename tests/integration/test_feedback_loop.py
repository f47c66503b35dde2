"""The whole loop on the real stack started by ``cxr-triage up``: produce -> score -> verdicts through the API
-> feedback rows -> one training request -> a challenger trained on Ray, registered in MLflow and gated ->
the gate's decision published, and online metrics on the processors' /metrics."""

from __future__ import annotations

import csv
import hashlib
import json
import sqlite3
import statistics
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer

from cxr_triage import topics
from cxr_triage.labels import LABELS
from cxr_triage.settings import Settings
from deploy.testing import stack_env
from tests.integration.conftest import Stack
from tests.integration.kafka_support import assign_from_start

pytestmark = pytest.mark.integration

DATASET = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "cxr-public"
PER_CLASS = 20
STUDIES = 2 * PER_CLASS


@pytest.fixture(scope="module")
def loop_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("loop")
    env = stack_env(home, worker_count=1, skip_model_init=False, feedback_loop=True)
    env.update(
        {
            "CXR_INITIAL_MODEL_INPUT_SIZE": "64",
            "CXR_KAFKA_PARTITIONS": "2",
            # The trigger fires when every verdict of the test is in; the floors and drift need more reads.
            "CXR_RETRAIN_MIN_LABELS": str(STUDIES),
            "CXR_METRICS_INTERVAL_S": "3",
            # A tiny bounded training on the public set and the feedback, so the loop fits a test.
            "CXR_RETRAIN_PUBLIC_DATA": str(DATASET),
            "CXR_RETRAIN_EPOCHS": "1",
            "CXR_RETRAIN_MAX_STEPS": "3",
            "CXR_RETRAIN_BATCH_SIZE": "4",
            "CXR_RETRAIN_WORKERS": "1",
            "CXR_RETRAIN_MIN_HELDOUT": "4",
            "CXR_RETRAIN_MIN_HELDOUT_PER_CLASS": "1",
        }
    )
    with Stack(home=home, env=env).running() as stack:
        yield stack


def _truth_rows() -> list[dict[str, str]]:
    labels_csv = DATASET / "labels.csv"
    assert labels_csv.exists(), f"the public sample set is missing: {DATASET} (see ../shared/datasets)"
    with labels_csv.open(newline="") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda row: row["Path"])
    normal = [row for row in rows if row["abnormal"] == "0"][:PER_CLASS]
    abnormal = [row for row in rows if row["abnormal"] == "1"][:PER_CLASS]
    # Alternate the classes so that any slice of the stream (the held-out slice too) holds both.
    return [row for pair in zip(normal, abnormal, strict=True) for row in pair]


def _verdict(row: dict[str, str]) -> dict[str, Any]:
    values = {label: (row[label] or "0").strip() for label in LABELS}
    return {
        "labels": {label: int(float(v) == 1.0) for label, v in values.items()},
        "uncertain": [label for label, v in values.items() if float(v) == -1.0],
    }


def _read(settings: Settings, topic: str, until: int, timeout_s: float) -> list[dict[str, Any]]:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"test-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    assign_from_start(consumer, topic)
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(found) < until and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                found.append(json.loads(msg.value()))
        # Anything more that is already there (a second request would be a defect).
        while (msg := consumer.poll(2.0)) is not None:
            if msg.error() is None:
                found.append(json.loads(msg.value()))
    finally:
        consumer.close()
    return found


def _wait(what: str, check: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def test_verdicts_become_feedback_a_training_request_and_a_gated_challenger(
    loop_stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = loop_stack
    settings = Settings(**{k[4:].lower(): v for k, v in stack.env.items() if k.startswith("CXR_")})
    rows = _truth_rows()
    files = [DATASET / row["Path"] for row in rows]
    produced = json.loads(stack.cli("produce", "--json", *map(str, files)).stdout)
    assert produced["n_published"] == STUDIES
    row_of = {hashlib.sha256(f.read_bytes()).hexdigest(): row for f, row in zip(files, rows, strict=True)}

    token = json.loads(stack.cli("users", "add", "dr-loop", "--role", "radiologist", "--json").stdout)[
        "token"
    ]
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=stack.api_url, headers=auth, timeout=30) as api:
        _wait(
            "every study scored",
            lambda: api.get("/worklist", params={"limit": 500}).json()["total"] == STUDIES,
            300,
        )
        for entry in produced["published"]:
            row = row_of[entry["sha256"]]
            response = api.post(
                f"/studies/{entry['study_id']}/verdict",
                json=_verdict(row),
                headers={"Idempotency-Key": str(uuid.uuid4())},
            )
            assert response.status_code == 200, response.text
        assert api.get("/worklist", params={"limit": 500}).json()["total"] == 0  # every study read

    def stats() -> dict[str, Any]:
        return dict(json.loads(stack.cli("feedback", "stats", "--json").stdout))

    done = _wait("40 feedback rows", lambda: (s := stats())["total"] == STUDIES and s, 180)
    assert done["by_model_version"] == {"1": STUDIES}
    assert done["unmatched_waiting"] == 0

    # Latency from the verdict event to its feedback row, from the store's own clock.
    with sqlite3.connect(settings.feedback_db_path) as db:
        stored = db.execute("SELECT event, stored_at FROM examples").fetchall()
    lags = [
        (
            datetime.fromisoformat(at.replace("Z", "+00:00"))
            - datetime.fromisoformat(json.loads(ev)["decided_at"])
        ).total_seconds()
        for ev, at in stored
    ]
    with capsys.disabled():
        print(f"\nverdict -> feedback row: median {statistics.median(lags):.2f} s, max {max(lags):.2f} s")

    requests = _read(settings, topics.TRAINING_REQUESTS, until=1, timeout_s=120)
    assert len(requests) == 1, requests  # exactly one request for the threshold crossed once
    request = requests[0]
    assert request["reason"] == "new_labels" and request["labelled_since_champion"] == STUDIES
    requested = datetime.fromisoformat(request["requested_at"])

    results = _read(settings, topics.TRAINING_RESULTS, until=1, timeout_s=600)
    assert [r["request_id"] for r in results] == [request["request_id"]]
    result = results[0]
    assert result["outcome"] in ("promoted", "rejected"), result  # a decision, not a failure
    assert result["gate"] and result["challenger_version"] and result["mlflow_run_id"]
    with capsys.disabled():
        took = (datetime.fromisoformat(result["finished_at"]) - requested).total_seconds()
        print(f"trigger -> gate decision published: {took:.0f} s, outcome {result['outcome']}")

    import mlflow

    # The registry named explicitly: a test run earlier in this process may have set mlflow's global one.
    uri = settings.mlflow_tracking_uri
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version(settings.model_name, str(result["challenger_version"]))
    assert version.tags["cxr.request_id"] == request["request_id"]
    assert version.tags["cxr.gate"] == ("passed" if result["outcome"] == "promoted" else "failed")

    handled = _wait("the request marked handled", lambda: stats()["training_requests"]["handled"] == 1, 60)
    assert handled and stats()["training_requests"]["pending"] == 0

    metrics = httpx.get(f"{settings.local_url(settings.processors_port)}/metrics", timeout=10).text
    assert 'cxr_online_examples{model_version="1",window="since_promotion"} 40.0' in metrics
    assert 'cxr_online_auroc{model_version="1",window="sliding"}' in metrics
