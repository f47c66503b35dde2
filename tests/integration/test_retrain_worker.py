"""The retrain worker against real services: Kafka (the session's private broker), MLflow, a local Ray cluster.

The feedback store is prefilled with examples whose images are public sample images copied into a temporary
image store; a training request goes to ``cxr.training-requests.v1`` while ``cxr-triage retrain-worker --once``
waits for it. A tiny bounded run (64 px, 1 Ray worker, 1 epoch of 3 steps of 4 images) trains the challenger,
the held-out slice gates it, and the result appears on ``cxr.training-results.v1``. Triton is not started: a
promotion writes the model repository and finds no server to wait for, which is all the promotion needs.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from mlflow.tracking import MlflowClient

from cxr_triage import topics
from cxr_triage.events import FeedbackEventV1, TrainingRequestEventV1, TrainingResultEventV1
from cxr_triage.feedback.store import FeedbackStore
from cxr_triage.image_store import LocalImageStore
from cxr_triage.labels import LABELS, NO_FINDING
from deploy.testing import cxr, stack_env
from tests.integration.conftest import wait_for_port
from tests.integration.kafka_support import KafkaBroker, read_topic

PUBLIC = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "cxr-public"
MODEL = "cxr_classifier"
PER_CLASS = 30  # 60 examples: about 18 held out, enough of each class for the gate at the test's minimums

pytestmark = pytest.mark.integration


@dataclass
class Loop:
    home: Path
    env: dict[str, str]
    bootstrap: str

    def client(self) -> MlflowClient:
        uri = self.env["CXR_MLFLOW_TRACKING_URI"]
        return MlflowClient(tracking_uri=uri, registry_uri=uri)

    def start_worker(self) -> subprocess.Popen[str]:
        """``retrain-worker --once`` in the background; returns once its metrics endpoint answers."""
        process = subprocess.Popen(
            [sys.executable, "-m", "cxr_triage", "retrain-worker", "--once", "--timeout-s", "300"],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for_port(int(self.env["CXR_RETRAIN_METRICS_PORT"]), timeout_s=120)
        return process

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.env['CXR_RETRAIN_METRICS_PORT']}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def publish(self, request: TrainingRequestEventV1) -> None:
        producer = Producer({"bootstrap.servers": self.bootstrap})
        producer.produce(topics.TRAINING_REQUESTS, key=request.request_id.encode(), value=request.to_bytes())
        assert producer.flush(30) == 0

    def results(self, request_id: str) -> list[dict[str, Any]]:
        # Read to the end (the topic is shared with other tests of the session), then keep this request's.
        found = read_topic(self.bootstrap, topics.TRAINING_RESULTS, lambda _: False, timeout_s=8)
        return [r for r in found if r["request_id"] == request_id]


def _skip_earlier_requests(bootstrap: str, group: str) -> None:
    """Commit the group at the topic's end: other tests' requests in the shared broker are not this worker's."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                meta = consumer.list_topics(topics.TRAINING_REQUESTS, timeout=10)
                ends = [
                    TopicPartition(topics.TRAINING_REQUESTS, p, consumer.get_watermark_offsets(
                        TopicPartition(topics.TRAINING_REQUESTS, p), timeout=10)[1])
                    for p in meta.topics[topics.TRAINING_REQUESTS].partitions
                ]  # fmt: skip
                consumer.commit(offsets=ends, asynchronous=False)
                return
            except KafkaException:  # a broker that just started has no partition leaders yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)
    finally:
        consumer.close()


def _public_rows() -> list[dict[str, str]]:
    """``PER_CLASS`` normal and abnormal frontal films of the public sample set, in file order."""
    with (PUBLIC / "labels.csv").open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("Frontal/Lateral", "Frontal") != "Lateral"]
    normal = [r for r in rows if r[NO_FINDING] == "1"][:PER_CLASS]
    abnormal = [r for r in rows if r[NO_FINDING] != "1" and r["abnormal"] == "1"][:PER_CLASS]
    assert len(normal) == len(abnormal) == PER_CLASS
    return [row for pair in zip(normal, abnormal, strict=True) for row in pair]


def _fill_feedback(settings_home: Path) -> int:
    images = LocalImageStore(settings_home / "images")
    store = FeedbackStore(settings_home / "feedback" / "feedback.sqlite3")
    t0 = datetime(2026, 12, 1, 8, tzinfo=UTC)
    for i, row in enumerate(_public_rows()):
        data = (PUBLIC / row["Path"]).read_bytes()
        uri = images.put(data, suffix=Path(row["Path"]).suffix)
        decided = t0 + timedelta(minutes=i)
        store.upsert(
            FeedbackEventV1(
                study_id=f"fb-{i:03d}",
                radiologist="dr-int",
                verdict_id=f"verdict-{i:05d}",
                kind="verdict",
                image_uri=uri,
                sha256=Path(uri).stem,
                content_type="image/jpeg" if uri.endswith(".jpg") else "image/png",
                labels={label: 1 if row[label] == "1" else 0 for label in LABELS},  # type: ignore[misc]
                uncertain=tuple(label for label in LABELS if row[label] == "-1"),
                model_name=MODEL,
                model_version="1",
                probabilities=dict.fromkeys(LABELS, 0.5),
                priority=0.5,
                received_at=decided - timedelta(minutes=30),
                scored_at=decided - timedelta(minutes=29),
                decided_at=decided,
            )
        )
    return store.max_seq()


@pytest.fixture(scope="module")
def loop(kafka: KafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    """MLflow started by ``cxr-triage up --only mlflow`` in a private home; Kafka is the session's broker."""
    if not PUBLIC.is_dir():
        pytest.fail(f"the public sample set is missing at {PUBLIC}")
    home = tmp_path_factory.mktemp("retrain-home")
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    env = stack_env(home)
    group = f"cxr-retrain-test-{uuid.uuid4().hex[:8]}"
    env.update(
        {
            "CXR_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
            "CXR_RAY_TMPDIR": ray_tmp,
            "CXR_RETRAIN_GROUP": group,
            "CXR_RETRAIN_WORKERS": "1",
            "CXR_RETRAIN_EPOCHS": "1",
            "CXR_RETRAIN_MAX_STEPS": "3",
            "CXR_RETRAIN_BATCH_SIZE": "4",
            "CXR_RETRAIN_INPUT_SIZE": "64",
            "CXR_RETRAIN_MIN_HELDOUT": "10",
            "CXR_RETRAIN_MIN_HELDOUT_PER_CLASS": "3",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        }
    )
    _skip_earlier_requests(kafka.bootstrap, group)
    try:
        up = cxr(["up", "--detach", "--only", "mlflow"], env, timeout_s=300)
        assert up.returncode == 0, f"{up.stdout}\n{up.stderr}"
        yield Loop(home=home, env=env, bootstrap=kafka.bootstrap)
    finally:
        cxr(["down"], env, timeout_s=120)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_a_request_trains_gates_and_publishes_once(loop: Loop) -> None:
    up_to = _fill_feedback(loop.home)
    request = TrainingRequestEventV1(
        request_id=f"req-{uuid.uuid4().hex[:12]}",
        reason="new_labels",
        detail="integration test",
        labelled_since_champion=up_to,
        total_examples=up_to,
        after_seq=0,
        up_to_seq=up_to,
    )
    worker = loop.start_worker()
    assert "cxr_retrain_busy 0.0" in loop.metrics()
    loop.publish(request)
    out, err = worker.communicate(timeout=600)
    assert worker.returncode == 0, err[-4000:]
    printed = json.loads(out)
    result = TrainingResultEventV1.model_validate(printed["result"])
    latency = (result.finished_at - request.requested_at).total_seconds()
    print(f"\nrequest published -> result: {latency:.1f} s ({result.outcome}: {result.reason})")

    # The result: a gate decision on the held-out slice, named versions, the data window.
    assert printed["handled"] == result.outcome and result.outcome in ("promoted", "rejected"), result.reason
    assert (result.request_id, result.after_seq, result.up_to_seq) == (request.request_id, 0, up_to)
    assert result.champion_version is None and result.challenger_version is not None
    gate = result.gate
    assert gate["heldout_n"] is not None and gate["heldout_n"] >= 10
    assert gate["challenger_auroc_macro"] is not None and gate["challenger_sensitivity"] is not None
    published = loop.results(request.request_id)
    assert len(published) == 1 and published[0]["_key"] == request.request_id
    assert published[0]["outcome"] == result.outcome

    # MLflow: the run and the registered challenger carry the request and the gate decision.
    client = loop.client()
    run = client.get_run(str(result.mlflow_run_id))
    assert run.info.status == "FINISHED"
    assert run.data.tags["cxr.request_id"] == request.request_id
    assert run.data.tags["cxr.retrain_reason"] == "new_labels"
    assert run.data.tags["cxr.outcome"] == result.outcome
    assert run.data.params["request_up_to_seq"] == str(up_to) and run.data.params["input_size"] == "64"
    version = client.get_model_version(MODEL, str(result.challenger_version))
    assert version.run_id == run.info.run_id and version.tags["cxr.request_id"] == request.request_id
    assert version.tags["cxr.gate"] == ("passed" if result.outcome == "promoted" else "failed")
    aliases = client.get_registered_model(MODEL).aliases
    serving_file = loop.home / "model_repository" / MODEL / "SERVING"
    if result.outcome == "promoted":
        assert aliases.get("champion") == result.challenger_version == result.serving_version
        assert serving_file.read_text().strip() == version.tags["cxr.served_version"]
    else:
        assert result.reason.startswith("gate refused: ") and "champion" not in aliases
        assert not serving_file.exists() and result.serving_version is None

    # The same request again (a producer retry, a replay): skipped, nothing trained or published.
    versions_before = len(client.search_model_versions(f"name='{MODEL}'"))
    worker = loop.start_worker()
    loop.publish(request)
    out, err = worker.communicate(timeout=300)
    assert worker.returncode == 0, err[-4000:]
    assert json.loads(out) == {"handled": "duplicate"}
    assert len(loop.results(request.request_id)) == 1
    runs = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.`cxr.request_id` = '{request.request_id}'"
    )
    assert len(runs) == 1
    assert len(client.search_model_versions(f"name='{MODEL}'")) == versions_before
