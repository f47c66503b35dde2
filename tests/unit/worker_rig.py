"""In-memory fakes for Kafka, Triton and Redis around one ``InferenceWorker`` (unit tests need no service)."""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from confluent_kafka import Message, TopicPartition
from PIL import Image

from cxr_triage import topics
from cxr_triage.events import StudyEventV1
from cxr_triage.image_store import LocalImageStore
from cxr_triage.labels import NUM_LABELS
from cxr_triage.model.contract import ModelContract
from cxr_triage.model.rollout import NONE, RolloutState
from cxr_triage.sla import SlaPolicy
from inference_worker.consumer import Backoff, InferenceWorker
from inference_worker.errors import StageUnavailable
from inference_worker.metrics import WorkerMetrics
from inference_worker.publisher import Outgoing
from inference_worker.triton_client import Scores
from inference_worker.worklist import WorklistEntry, WriteOutcome

SIZE = 32
RECEIVED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
NOW = RECEIVED + timedelta(seconds=2)


class FakeConsumer:
    """Partitions as lists (offset = index), positions moved by consume and seek, commits recorded."""

    def __init__(self, journal: list[str], messages: Sequence[Message]) -> None:
        self.journal = journal
        self.log: dict[int, list[Message]] = {}
        for message in messages:
            self.log.setdefault(message.partition() or 0, []).append(message)
        self.next = dict.fromkeys(self.log, 0)
        self.paused: set[int] = set()
        self.commits: list[list[tuple[str, int, int]]] = []
        self.seeks: list[tuple[str, int, int]] = []
        self.after_commit: list[threading.Event] = []
        self.on_consume: list[Callable[[FakeConsumer], None]] = []

    def subscribe(self, topic_names: list[str], **callbacks: object) -> None:
        assert topic_names == [topics.STUDIES]
        assert set(callbacks) == {"on_assign", "on_revoke", "on_lost"}

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        for hook in self.on_consume:
            hook(self)
        batch: list[Message] = []
        for partition, messages in self.log.items():
            if partition in self.paused:
                continue
            take = messages[self.next[partition] : self.next[partition] + num_messages - len(batch)]
            self.next[partition] += len(take)
            batch.extend(take)
        return batch

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool = True) -> list[TopicPartition]:
        assert asynchronous is False
        self.journal.append("commit")
        self.commits.append(sorted((tp.topic, tp.partition, tp.offset) for tp in offsets))
        for event in self.after_commit:
            event.set()
        return offsets

    def seek(self, partition: TopicPartition) -> None:
        self.seeks.append((partition.topic, partition.partition, partition.offset))
        self.next[partition.partition] = partition.offset

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(topics.STUDIES, p) for p in self.log]

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.journal.append(f"pause:{sorted(tp.partition for tp in partitions)}")
        self.paused.update(tp.partition for tp in partitions)

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.journal.append(f"resume:{sorted(tp.partition for tp in partitions)}")
        self.paused.difference_update(tp.partition for tp in partitions)

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.next[tp.partition]) for tp in partitions]

    def committed(self, partitions: list[TopicPartition], timeout: float = -1) -> list[TopicPartition]:
        done = {p: o for commit in self.commits for _, p, o in commit}
        return [TopicPartition(tp.topic, tp.partition, done.get(tp.partition, -1001)) for tp in partitions]

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = -1, cached: bool = False
    ) -> tuple[int, int]:
        return 0, len(self.log[partition.partition])


class FakeScorer:
    def __init__(self, journal: list[str], *, name: str = "triton", value: float = 0.1) -> None:
        self.journal = journal
        self.name = name  # journal entries read "<name>:<batch size>"
        self.value = value  # every probability of a row not in ``rows``
        self.failures = 0
        self.rows: dict[int, np.ndarray] = {}
        self.cams: np.ndarray | None = None  # [14, h, w] for every row when set
        self.served = ModelContract(input_size=SIZE, version="1")  # what Triton's metadata says now
        self.contracts_read = 0
        self.shapes: list[tuple[int, ...]] = []  # of every batch sent
        self._contract: ModelContract | None = None

    def contract(self) -> ModelContract:
        if self._contract is None:
            self.contracts_read += 1
            self._contract = self.served
        return self._contract

    def invalidate(self) -> None:
        self._contract = None

    @property
    def version(self) -> str:
        return self.served.version

    @version.setter
    def version(self, value: str) -> None:
        """Triton switched to version ``value`` (same input size, no thresholds)."""
        self.served = ModelContract(input_size=self.served.input_size, version=value)

    def score(self, images: np.ndarray) -> Scores:
        self.journal.append(f"{self.name}:{len(images)}")
        self.shapes.append(tuple(images.shape))
        if images.dtype != np.uint8 or images.shape[1:] != (
            1,
            self.served.input_size,
            self.served.input_size,
        ):
            self.invalidate()
            raise StageUnavailable("triton", f"unexpected shape {list(images.shape)}")  # as Triton refuses it
        if self.failures:
            self.failures -= 1
            raise StageUnavailable("triton", "connection refused")
        probabilities = np.full((len(images), NUM_LABELS), self.value, dtype=np.float32)
        for i, row in self.rows.items():
            probabilities[i] = row
        cams = None if self.cams is None else np.stack([self.cams] * len(images))
        return Scores(probabilities, [self.version] * len(images), cams)


class FakeWorklist:
    """The Redis script's rule, in memory: the first prediction written for a study wins (late images are the
    script's own business: tests/integration/test_worker_redis.py)."""

    def __init__(self, journal: list[str]) -> None:
        self.journal = journal
        self.failures = 0
        self.stored: dict[str, WriteOutcome] = {}
        self.entries: list[WorklistEntry] = []

    def write(self, entries: Sequence[WorklistEntry]) -> list[WriteOutcome]:
        self.journal.append(f"redis:{len(entries)}")
        if self.failures:
            self.failures -= 1
            raise StageUnavailable("redis", "connection refused")
        outcomes = []
        for entry in entries:
            p = entry.prediction
            if p.study_id in self.stored:
                outcomes.append(replace(self.stored[p.study_id], changed=False))
                continue
            self.entries.append(entry)
            self.stored[p.study_id] = WriteOutcome(
                True,
                p.model_version,
                p.scored_at,
                p.priority,
                dict(p.probabilities),
                entry.tier,
                arm=p.arm,
                threshold=p.threshold,
                shadow=entry.shadow,
                image_id=p.image_id,
                images=p.images,
            )
            outcomes.append(self.stored[p.study_id])
        return outcomes

    def mark_published(self, study_ids: Sequence[str]) -> None:
        self.journal.append(f"published:{len(study_ids)}")
        for study_id in study_ids:
            if study_id in self.stored:
                self.stored[study_id] = replace(self.stored[study_id], published=True)


class FakeChallenger:
    """The challenger model beside the champion: a scorer of its own and the rollout state Triton shows."""

    def __init__(self, journal: list[str], state: RolloutState = NONE, *, input_size: int = SIZE) -> None:
        self.fake = FakeScorer(journal, name="challenger", value=0.6)
        self.fake.served = ModelContract(input_size=input_size, version=state.challenger_version or "2")
        self.rollout = state
        self.invalidated = 0

    @property
    def scorer(self) -> FakeScorer:
        return self.fake

    def state(self) -> RolloutState:
        return self.rollout

    def invalidate(self) -> None:
        self.invalidated += 1
        self.fake.invalidate()


class FakePublisher:
    def __init__(self, journal: list[str]) -> None:
        self.journal = journal
        self.failures = 0
        self.sent: list[Outgoing] = []

    def publish(self, messages: Sequence[Outgoing]) -> None:
        self.journal.append(f"kafka:{len(messages)}")
        if self.failures:
            self.failures -= 1
            raise StageUnavailable("kafka", "all brokers down")
        self.sent.extend(messages)

    def close(self) -> None:
        pass

    def of(self, topic: str) -> list[Outgoing]:
        return [m for m in self.sent if m.topic == topic]


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (80, 80), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def study_message(
    store: LocalImageStore,
    study_id: str,
    offset: int,
    *,
    partition: int = 0,
    data: bytes | None = None,
    **over: object,
) -> Message:
    data = png(offset) if data is None else data
    fields: dict[str, object] = {
        "study_id": study_id,
        "image_uri": store.put(data, suffix=".png"),
        "sha256": hashlib.sha256(data).hexdigest(),
        "content_type": "image/png",
        "size_bytes": len(data),
        "received_at": RECEIVED,
        "source": "test",
    }
    fields.update(over)
    value = StudyEventV1.model_validate(fields).to_bytes()
    return raw_message(value, offset, key=study_id.encode(), partition=partition)


def raw_message(value: bytes | None, offset: int, *, key: bytes | None = None, partition: int = 0) -> Message:
    return Message(topic=topics.STUDIES, partition=partition, offset=offset, key=key, value=value)


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.journal: list[str] = []
        self.store = LocalImageStore(tmp_path / "images")
        self.scorer = FakeScorer(self.journal)
        self.worklist = FakeWorklist(self.journal)
        self.publisher = FakePublisher(self.journal)
        self.metrics = WorkerMetrics()
        self.stop = threading.Event()
        self.consumer: FakeConsumer | None = None

    def worker(
        self, messages: Sequence[Message], *, max_batch: int = 8, challenger: FakeChallenger | None = None
    ) -> InferenceWorker:
        self.consumer = FakeConsumer(self.journal, messages)
        return InferenceWorker(
            consumer=self.consumer,  # type: ignore[arg-type]
            scorer=self.scorer,
            worklist=self.worklist,
            publisher=self.publisher,
            store=self.store,
            metrics=self.metrics,
            model_name="cxr_classifier",
            sla=SlaPolicy(),
            max_batch=max_batch,
            max_wait_s=0.01,
            stop=self.stop,
            backoff=Backoff(initial_s=0.001, maximum_s=0.002),
            clock=lambda: NOW,
            challenger=challenger,
        )

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value
