"""A private stack and a study stream through it, for tests that hurt or switch the stack mid-stream.

Each test publishes its own distinct studies (a single pixel changed per image, so the content-derived study
ids differ) through the real producer code at a steady rate, changes something mid-stream, waits until the
workers' group has committed every study, and then checks Redis and ``cxr.predictions.v1`` with
``assert_each_once_on_the_worklist``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import threading
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from cxr_triage import topics
from cxr_triage.events import PredictionEventV1
from cxr_triage.image_store import LocalImageStore
from cxr_triage.ingest.pseudonym import Pseudonymiser
from cxr_triage.ingest.publisher import EventPublisher
from cxr_triage.ingest.service import publish_images
from cxr_triage.ingest.validate import PreparedImage, prepare
from cxr_triage.redis_client import open_redis
from cxr_triage.settings import Settings
from cxr_triage.sla import TIERS
from cxr_triage.worklist.keys import WorklistKeys
from deploy.testing import stack_env
from tests.integration.conftest import Stack

COMPONENTS = "kafka,redis,triton,worker"
IMAGE_SIDE = 96
# The stream is of PNG images, named by their hashes: the key only has to be valid.
PSEUDONYMS = Pseudonymiser(SecretStr("stream-test-pseudonym-key-" * 2))
DATASET = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "cxr-public" / "images"


@dataclass
class StreamStack:
    stack: Stack
    settings: Settings
    folder: Path
    produced: set[str] = field(default_factory=set)

    def up(self) -> None:
        self.stack.cli("up", "--detach", "--only", COMPONENTS, timeout_s=300)

    def pid(self, component: str) -> int:
        record = json.loads((self.settings.run_dir / f"{component}.pid").read_text())
        return int(record["pid"])

    def kill(self, component: str) -> None:
        """SIGKILL the component's whole process group (Triton's Python stubs go with it)."""
        os.killpg(self.pid(component), signal.SIGKILL)

    def freeze(self, component: str, *, frozen: bool) -> None:
        """SIGSTOP / SIGCONT the component's main process only: a frozen Python-backend stub makes Triton
        take it for unhealthy and crash when thawed, while a frozen server alone just answers late."""
        os.kill(self.pid(component), signal.SIGSTOP if frozen else signal.SIGCONT)

    def worker_metric(self, name: str, index: int, **labels: str) -> float:
        url = f"http://127.0.0.1:{self.settings.worker_metrics_port + index}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return 0.0
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )

    def failures(self, stage: str) -> float:
        return sum(
            self.worker_metric("cxr_worker_batch_failures_total", i, stage=stage)
            for i in range(self.settings.worker_count)
        )


@contextlib.contextmanager
def running_stream_stack(
    tmp_path_factory: pytest.TempPathFactory, name: str, *, workers: int, env: dict[str, str]
) -> Iterator[StreamStack]:
    """A private stack (Kafka, Redis, Triton, ``workers`` workers) with ``env`` on top, down afterwards."""
    home = tmp_path_factory.mktemp(f"{name}-stack")
    full = {**stack_env(home, worker_count=workers, skip_model_init=False), **env}
    stack = Stack(home=home, env=full)
    settings = Settings(**{k[4:].lower(): v for k, v in full.items() if k.startswith("CXR_")})
    started = StreamStack(stack, settings, tmp_path_factory.mktemp(f"{name}-images"))
    try:
        started.up()
        yield started
    finally:
        stack.cli("down", check=False, timeout_s=120)


def _base_image() -> np.ndarray:
    files = sorted(DATASET.glob("*.jpg"))[:1]
    if files:
        with Image.open(files[0]) as image:
            return np.asarray(image.convert("L").resize((IMAGE_SIDE, IMAGE_SIDE)), dtype=np.uint8).copy()
    from producers.sample_images import synthetic_radiograph

    return np.asarray(synthetic_radiograph(np.random.default_rng(0), size=IMAGE_SIDE), dtype=np.uint8).copy()


def make_studies(folder: Path, *, first: int, count: int) -> list[PreparedImage]:
    """``count`` distinct PNG radiographs: the same image with pixel ``first + i`` changed by one grey level."""
    base = _base_image()
    studies = []
    for index in range(first, first + count):
        pixels = base.copy()
        pixels.flat[index] ^= 1
        path = folder / f"study-{index:05d}.png"
        buf = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buf, format="PNG")
        path.write_bytes(buf.getvalue())
        prepared = prepare(path, PSEUDONYMS)
        assert isinstance(prepared, PreparedImage), prepared
        studies.append(prepared)
    assert len({s.study_id for s in studies}) == count
    return studies


class Stream:
    """Publishes studies at a steady rate from a thread, through the producer's own code."""

    def __init__(self, target: StreamStack, studies: list[PreparedImage], *, per_s: float) -> None:
        self.target = target
        self.studies = studies
        self.interval_s = 1.0 / per_s
        self.published: list[str] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        store = LocalImageStore(self.target.settings.image_store_dir)
        try:
            with EventPublisher(self.target.settings, client_id=f"test-stream-{uuid.uuid4().hex[:6]}") as pub:
                for study in self.studies:
                    publish_images([study], store=store, publisher=pub, source="test-stream")
                    pub.flush()
                    self.published.append(study.study_id)
                    time.sleep(self.interval_s)
        except BaseException as exc:  # reported by join()
            self.error = exc

    def start(self) -> Stream:
        self._thread.start()
        return self

    def wait_for(self, count: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.published) < count:
            assert time.monotonic() < deadline, f"only {len(self.published)} studies published"
            time.sleep(0.05)

    def join(self) -> list[str]:
        self._thread.join(timeout=120)
        assert self.error is None, f"publishing failed: {self.error!r}"
        self.target.produced.update(self.published)
        return self.published


def wait_until_committed(settings: Settings, timeout_s: float = 90.0) -> None:
    """Until the workers' group has committed every study published so far (no more outputs will come)."""
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": settings.worker_group}
    )
    partitions = [TopicPartition(topics.STUDIES, p) for p in range(settings.kafka_partitions)]
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            committed = consumer.committed(partitions, timeout=10)
            lag = sum(
                consumer.get_watermark_offsets(tp, timeout=10)[1] - max(c.offset, 0)
                for tp, c in zip(partitions, committed, strict=True)
            )
            if lag == 0:
                return
            assert time.monotonic() < deadline, f"the workers still have {lag} studies to commit"
            time.sleep(0.5)
    finally:
        consumer.close()


def read_predictions(settings: Settings, ids: set[str]) -> dict[str, list[PredictionEventV1]]:
    """Every prediction on the topic so far for ``ids``, in order, read to the end of each partition."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"test-predictions-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    metadata = consumer.list_topics(topics.PREDICTIONS, timeout=10)
    partitions = [
        TopicPartition(topics.PREDICTIONS, p, OFFSET_BEGINNING)
        for p in metadata.topics[topics.PREDICTIONS].partitions
    ]
    ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions}
    consumer.assign(partitions)
    found: dict[str, list[PredictionEventV1]] = defaultdict(list)
    done = {p for p, end in ends.items() if end == 0}
    deadline = time.monotonic() + 60
    try:
        while len(done) < len(ends):
            assert time.monotonic() < deadline, "could not read the predictions topic to its end"
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                continue
            event = PredictionEventV1.from_bytes(message.value() or b"")
            if event.study_id in ids:
                found[event.study_id].append(event)
            if (message.offset() or 0) + 1 >= ends[message.partition() or 0]:
                done.add(message.partition() or 0)
    finally:
        consumer.close()
    return dict(found)


def assert_each_once_on_the_worklist(
    target: StreamStack, ids: list[str], *, republish_allowed: bool, cam_sides: dict[str, int] | None = None
) -> dict[str, list[PredictionEventV1]]:
    """Each of ``ids`` once on the worklist, filed once, as first published; maps of the scoring version's
    side (``cam_sides`` by version; 2 x 2, the 64 px model's, by default)."""
    settings = target.settings
    wait_until_committed(settings)
    predictions = read_predictions(settings, set(ids))
    client = open_redis(settings, decode_responses=True)
    keys = WorklistKeys(settings.redis_key_prefix)
    try:
        assert client.zcard(keys.worklist) == len(target.produced)  # no study twice, none extra
        for study_id in ids:
            events = predictions.get(study_id, [])
            assert events, f"{study_id}: no prediction published"
            assert all(e == events[0] for e in events), f"{study_id} was scored more than once: {events}"
            if not republish_allowed:
                assert len(events) == 1, f"{study_id}: {len(events)} predictions"
            first = events[0]
            assert client.zscore(keys.worklist, study_id) == first.priority, f"{study_id} not on the worklist"
            tiers = [t for t in TIERS if client.zscore(keys.unread(t), study_id) is not None]
            assert len(tiers) == 1, f"{study_id} is filed in tiers {tiers}"
            stored = client.hgetall(keys.study(study_id))
            assert stored["model_version"] == first.model_version
            assert stored["scored_at"] == first.scored_at.isoformat()
            assert float(stored["priority"]) == first.priority
            assert json.loads(stored["probabilities"]) == first.probabilities
            side = str((cam_sides or {}).get(first.model_version, 2))
            assert client.exists(keys.cam(study_id)) and stored["cam_h"] == stored["cam_w"] == side
    finally:
        client.close()
    return predictions


def wait_for(condition_name: str, check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {condition_name}"
        time.sleep(0.1)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False
