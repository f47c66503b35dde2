"""End to end: files -> producer -> Kafka -> worker -> Triton -> Redis -> API, on the real local stack."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from cxr_triage import topics
from cxr_triage.events import StudyEventV1, utcnow
from cxr_triage.image_store import LocalImageStore
from cxr_triage.labels import LABELS
from cxr_triage.settings import Settings
from tests.factories import jpeg_bytes, png_bytes
from tests.integration.conftest import Stack
from tests.integration.kafka_support import assign_from_start

pytestmark = pytest.mark.integration


def _settings(stack: Stack) -> Settings:
    return Settings(**{k[4:].lower(): v for k, v in stack.env.items() if k.startswith("CXR_")})


SHARED_FIELDS = (
    "study_id",
    "priority",
    "probabilities",
    "model_name",
    "model_version",
    "received_at",
    "scored_at",
)


def _get(stack: Stack, path: str, **params: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {stack.token()}"}
    return httpx.get(f"{stack.api_url}{path}", params=params, headers=headers, timeout=10)


def _worklist(stack: Stack) -> dict[str, Any]:
    response = _get(stack, "/worklist", limit=500)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def _wait_for_total(stack: Stack, expected: int, timeout_s: float = 180.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    body = _worklist(stack)
    while body["total"] < expected and time.monotonic() < deadline:
        time.sleep(0.5)
        body = _worklist(stack)
    assert body["total"] == expected, f"worklist has {body['total']} studies, expected {expected}"
    return body


def _wait_until_consumed(settings: Settings, timeout_s: float = 120.0) -> None:
    """Wait until the workers' group has committed every study published so far."""
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": settings.worker_group}
    )
    try:
        partitions = [TopicPartition(topics.STUDIES, p) for p in range(settings.kafka_partitions)]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            committed = consumer.committed(partitions, timeout=10)
            lag = sum(
                consumer.get_watermark_offsets(tp, timeout=10)[1] - max(c.offset, 0)
                for tp, c in zip(partitions, committed, strict=True)
            )
            if lag == 0:
                return
            time.sleep(0.5)
        raise AssertionError(f"worker group still has lag {lag} after {timeout_s}s")
    finally:
        consumer.close()


def _read_dlq(
    settings: Settings, wanted: Callable[[dict[str, Any]], bool], expected: int, timeout_s: float = 60.0
) -> list[dict[str, Any]]:
    """Dead letters that ``wanted`` accepts, so that the test reads only what it caused."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"test-dlq-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    assign_from_start(consumer, topics.DLQ)
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(events) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None and wanted(event := json.loads(msg.value())):
                events.append(event)
    finally:
        consumer.close()
    return events


def test_studies_flow_to_the_worklist_once_and_bad_input_goes_to_the_dlq(
    stack: Stack, sample_images: list[Path], tmp_path: Path
) -> None:
    settings = _settings(stack)
    init = json.loads(stack.cli("model", "init", "--json").stdout)
    assert init["created"] is False, "up must have initialised the model already"

    assert _worklist(stack)["total"] == 0
    produced = json.loads(stack.cli("produce", "--json", *map(str, sample_images)).stdout)
    assert produced["n_published"] == 20 and produced["n_rejected"] == 0

    body = _wait_for_total(stack, 20)
    order = [item["sla"]["effective_priority"] for item in body["items"]]
    assert order == sorted(order, reverse=True)
    published_ids = {entry["study_id"] for entry in produced["published"]}
    items = body["items"]
    assert {item["study_id"] for item in items} == published_ids
    for item in items:
        assert list(item["probabilities"]) == list(LABELS)
        assert all(0.0 <= p <= 1.0 for p in item["probabilities"].values())
        assert item["model_version"] == "1"
        assert item["scored_at"] >= item["received_at"]
    first = items[0]
    study = _get(stack, f"/studies/{first['study_id']}").json()
    assert {k: study[k] for k in SHARED_FIELDS} == {k: first[k] for k in SHARED_FIELDS}
    assert httpx.get(f"{stack.api_url}/worklist", timeout=10).status_code == 401

    # The same 20 files again: same study ids, so the worklist still has 20 entries, unchanged.
    again = json.loads(stack.cli("produce", "--json", *map(str, sample_images)).stdout)
    assert {entry["study_id"] for entry in again["published"]} == published_ids
    _wait_until_consumed(settings)
    scored = {(i["study_id"], json.dumps(i["probabilities"]), i["scored_at"]) for i in items}
    rescored = {
        (i["study_id"], json.dumps(i["probabilities"]), i["scored_at"]) for i in _worklist(stack)["items"]
    }
    assert rescored == scored

    # Bad files are rejected by the producer, each with a reason, and dead-lettered.
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(jpeg_bytes(7)[:300])
    text = tmp_path / "report.txt"
    text.write_text("not an image\n" * 50)
    rejected = stack.cli("produce", "--json", str(corrupt), str(text), check=False)
    assert rejected.returncode == 1
    # Files are named by content hash: a file name may carry the patient's.
    reasons = {entry["sha256"]: entry["reason"] for entry in json.loads(rejected.stdout)["rejected"]}
    corrupt_sha, text_sha = (hashlib.sha256(p.read_bytes()).hexdigest() for p in (corrupt, text))
    assert "truncated" in reasons[corrupt_sha] and "not a PNG, JPEG or DICOM" in reasons[text_sha]

    # A gateway that skips validation: garbage and a corrupt image reach Kafka next to a good study.
    store = LocalImageStore(settings.image_store_dir)
    bad_bytes = jpeg_bytes(8)[:300]
    bad_event = StudyEventV1(
        study_id="bad-study-1",
        image_uri=store.put(bad_bytes, suffix=".jpg"),
        sha256=hashlib.sha256(bad_bytes).hexdigest(),
        content_type="image/jpeg",
        size_bytes=len(bad_bytes),
        received_at=utcnow(),
        source="test-gateway",
    )
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    producer.produce(topics.STUDIES, key=b"garbage", value=b"{not json")
    producer.produce(topics.STUDIES, key=bad_event.study_id.encode(), value=bad_event.to_bytes())
    assert producer.flush(30) == 0
    good_extra = tmp_path / "extra.png"
    good_extra.write_bytes(png_bytes(seed=99, size=256))
    stack.cli("produce", str(good_extra))

    ours = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (corrupt, text)}
    dead = _read_dlq(
        settings,
        lambda e: (
            e.get("sha256") in ours or e.get("study_id") == "bad-study-1" or e.get("original") == "{not json"
        ),
        expected=4,
    )
    by_stage: dict[str, list[dict[str, Any]]] = {"producer": [], "worker": []}
    for event in dead:
        by_stage[event["stage"]].append(event)
    assert len(by_stage["producer"]) == 2 and all(e["reason"] for e in by_stage["producer"])
    assert len(by_stage["worker"]) == 2
    worker_reasons = " | ".join(e["reason"] for e in by_stage["worker"])
    assert "truncated" in worker_reasons
    assert any(e["original"] == "{not json" for e in by_stage["worker"])
    assert any(e["study_id"] == "bad-study-1" for e in by_stage["worker"])

    final = _wait_for_total(stack, 21)
    assert "bad-study-1" not in {item["study_id"] for item in final["items"]}


def test_down_stops_every_process_it_started(stack: Stack) -> None:
    pids = [int(json.loads(p.read_text())["pid"]) for p in (stack.home / "run").glob("*.pid")]
    assert pids, "up should have written pid files"
    stack.cli("down")
    for pid in pids:
        assert not _alive(pid), f"process {pid} survived down: {_describe(pid)}"
    status = json.loads(stack.cli("status", "--json").stdout)
    assert all(c["state"] == "stopped" for c in status["components"].values())


def _alive(pid: int) -> bool:
    # A zombie has exited; it only waits to be reaped by its (re)parent, which the stack does not control.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _describe(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return "gone"
