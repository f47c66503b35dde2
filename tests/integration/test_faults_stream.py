"""Studies stream through the real stack while it is hurt: Triton killed, Redis killed, a worker killed, the
served model version switched. After each, every produced study is on the worklist exactly once.

One private stack (Kafka, Redis, Triton, two workers in one consumer group; no API) serves the whole module.
Each test publishes its own distinct studies (a single pixel changed per image, so the content-derived study
ids differ) through the real producer code at a steady rate, injects its fault mid-stream, waits until the
workers' group has committed every study, and then checks Redis and ``cxr.predictions.v1``:

- each study is in the ``worklist`` sorted set and in exactly one SLA tier, and the cardinality of the set is
  the number of distinct studies the module has produced;
- its hash holds the first prediction published for it, and any prediction published again for it (a replay
  after a crash) is identical: nothing was scored twice.
"""

from __future__ import annotations

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
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from cxr_triage import topics
from cxr_triage.events import PredictionEventV1
from cxr_triage.image_store import LocalImageStore
from cxr_triage.settings import Settings
from cxr_triage.sla import TIERS
from cxr_triage.worklist_index import WorklistKeys
from deploy.testing import stack_env
from cxr_triage.model.export import build_densenet121, export_model
from cxr_triage.model.repository import add_version, serve_version
from cxr_triage.ingest.validate import PreparedStudy, prepare
from cxr_triage.ingest.publisher import EventPublisher
from cxr_triage.ingest.service import publish_study
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

COMPONENTS = "kafka,redis,triton,worker"
IMAGE_SIDE = 96
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


@pytest.fixture(scope="module")
def stream_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamStack]:
    home = tmp_path_factory.mktemp("stream-stack")
    env = stack_env(home, worker_count=2, skip_model_init=False)
    env.update({"CXR_MODEL_INPUT_SIZE": "64", "CXR_KAFKA_PARTITIONS": "4"})
    stack = Stack(home=home, env=env)
    settings = Settings(**{k[4:].lower(): v for k, v in env.items() if k.startswith("CXR_")})
    started = StreamStack(stack, settings, tmp_path_factory.mktemp("stream-images"))
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


def make_studies(folder: Path, *, first: int, count: int) -> list[PreparedStudy]:
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
        prepared = prepare(path)
        assert isinstance(prepared, PreparedStudy), prepared
        studies.append(prepared)
    assert len({s.study_id for s in studies}) == count
    return studies


class Stream:
    """Publishes studies at a steady rate from a thread, through the producer's own code."""

    def __init__(self, target: StreamStack, studies: list[PreparedStudy], *, per_s: float) -> None:
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
                    publish_study(study=study, store=store, publisher=pub, source="test-stream")
                    pub.flush(30)
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
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": settings.worker_group})
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
            "bootstrap.servers": settings.kafka_bootstrap,
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
    target: StreamStack, ids: list[str], *, republish_allowed: bool
) -> dict[str, list[PredictionEventV1]]:
    settings = target.settings
    wait_until_committed(settings)
    predictions = read_predictions(settings, set(ids))
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
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
            assert client.exists(keys.cam(study_id)) and stored["cam_h"] == stored["cam_w"] == "2"
    finally:
        client.close()
    return predictions


def wait_for(condition_name: str, check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {condition_name}"
        time.sleep(0.1)


def test_triton_killed_mid_stream_and_restarted(stream_stack: StreamStack) -> None:
    studies = make_studies(stream_stack.folder, first=0, count=40)
    before = stream_stack.failures("triton")
    stream = Stream(stream_stack, studies, per_s=4).start()
    stream.wait_for(8)
    stream_stack.kill("triton")
    # Restart only once a worker has failed a batch on it: the fault is proven to have hit the stream.
    wait_for("a batch to fail on Triton", lambda: stream_stack.failures("triton") > before)
    stream_stack.up()
    published = stream.join()
    assert len(published) == 40
    assert_each_once_on_the_worklist(stream_stack, published, republish_allowed=True)


def test_redis_killed_mid_stream_and_restarted(stream_stack: StreamStack) -> None:
    studies = make_studies(stream_stack.folder, first=1000, count=40)
    before = stream_stack.failures("redis")
    stream = Stream(stream_stack, studies, per_s=4).start()
    stream.wait_for(8)
    stream_stack.kill("redis")
    wait_for("a batch to fail on Redis", lambda: stream_stack.failures("redis") > before)
    stream_stack.up()  # the append-only file brings back every acknowledged write
    published = stream.join()
    assert_each_once_on_the_worklist(stream_stack, published, republish_allowed=True)


def hold_a_batch_of_worker_1(
    target: StreamStack, component: str, *, hold_s: float, attempts: int = 20
) -> None:
    """Freeze ``component`` (SIGSTOP) while worker-1 is inside a batch, so that the batch stays there.

    A batch is only seen from outside as ``cxr_worker_in_flight > 0``: freeze once it is, and keep the freeze
    if the batch is still in flight ``hold_s`` later (it waits on the frozen component), else thaw and retry.
    """
    for _ in range(attempts):
        wait_for("worker-1 to take a batch", lambda: target.worker_metric("cxr_worker_in_flight", 1) > 0)
        target.freeze(component, frozen=True)
        time.sleep(hold_s)
        if target.worker_metric("cxr_worker_in_flight", 1) > 0:
            return
        target.freeze(component, frozen=False)
    raise AssertionError(f"worker-1 never held a batch on a frozen {component}")


def kill_worker_1_mid_batch(target: StreamStack, *, holding: str, hold_s: float, first: int) -> float:
    """SIGKILL worker-1 while its batch waits on ``holding`` (frozen with SIGSTOP), then thaw it.

    Freezing Triton stops a batch before its worklist write; freezing Kafka stops it after the write, while its
    predictions are being published, before the commit. Either way worker-0 must take the partitions over
    (after the 10 s session timeout) and leave every study on the worklist once. Returns how many studies
    worker-0 found already scored (replays of worker-1's uncommitted batch, mostly).
    """
    replays_before = target.worker_metric("cxr_worker_studies_unchanged_total", 0)
    stream = Stream(target, make_studies(target.folder, first=first, count=40), per_s=5).start()
    stream.wait_for(8)
    try:
        hold_a_batch_of_worker_1(target, holding, hold_s=hold_s)
        target.kill("worker-1")
    finally:
        target.freeze(holding, frozen=False)
    try:
        published = stream.join()
        assert_each_once_on_the_worklist(target, published, republish_allowed=True)
        return target.worker_metric("cxr_worker_studies_unchanged_total", 0) - replays_before
    finally:
        target.up()  # worker-1 back for the tests after this one


def test_a_worker_killed_while_its_batch_is_in_triton(stream_stack: StreamStack) -> None:
    kill_worker_1_mid_batch(stream_stack, holding="triton", hold_s=1.0, first=2000)


def test_a_worker_killed_after_its_worklist_write_before_its_commit(stream_stack: StreamStack) -> None:
    # 2 s: a batch still in flight that long with Kafka frozen has passed Triton and Redis and waits to publish.
    replays = kill_worker_1_mid_batch(stream_stack, holding="kafka", hold_s=2.0, first=3000)
    assert replays >= 1  # worker-0 re-read the killed batch, found it on the worklist and left it unchanged


def test_serving_a_new_version_mid_stream_scores_each_study_once(stream_stack: StreamStack) -> None:
    settings = stream_stack.settings
    exported = export_model(
        build_densenet121(seed=2),
        stream_stack.folder / "v2.onnx",
        input_size=64,
        metadata={"cxr.weights": "test"},
    )
    version = add_version(settings, exported, metadata={"source": "test"})
    assert version == 2
    early = make_studies(stream_stack.folder, first=4000, count=30)
    stream = Stream(stream_stack, early, per_s=5).start()
    stream.wait_for(10)
    serve_version(settings, version)
    http = f"http://127.0.0.1:{settings.triton_http_port}/v2/models/{settings.model_name}/versions"

    def switched() -> bool:
        return _http_ok(f"{http}/2/ready") and not _http_ok(f"{http}/1/ready")

    wait_for("Triton to serve version 2 only", switched, timeout_s=60)
    early_ids = stream.join()
    late = Stream(stream_stack, make_studies(stream_stack.folder, first=5000, count=10), per_s=5).start()
    late_ids = late.join()

    predictions = assert_each_once_on_the_worklist(
        stream_stack, early_ids + late_ids, republish_allowed=False
    )
    assert {predictions[s][0].model_version for s in late_ids} == {"2"}
    versions = [predictions[s][0].model_version for s in early_ids]
    assert versions[0] == "1" and set(versions) <= {"1", "2"}


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False
