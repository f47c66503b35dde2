"""The worker's Kafka output in transactions: a batch's predictions, dead letters and offsets commit together,
and any failure leaves none of them (aborted, or the producer dropped so that the next one fences it)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from cxr_triage import topics
from inference_worker.consumer import _next_offsets
from inference_worker.errors import StageUnavailable
from inference_worker.publisher import OffsetCommittingPublisher, Outgoing, TransactionalPublisher
from inference_worker.records import Record
from tests.unit.test_worker_outputs import letter
from tests.unit.worker_rig import FakeConsumer, FakePublisher, Rig, study_message

OFFSETS = [TopicPartition(topics.STUDIES, 0, 8)]
GROUP = object()


def txn_error(*, retriable: bool = False, abortable: bool = False, fatal: bool = False) -> KafkaException:
    return KafkaException(
        KafkaError(
            KafkaError._TIMED_OUT if retriable else KafkaError._STATE,
            "injected",
            fatal=fatal,
            retriable=retriable,
            txn_requires_abort=abortable,
        )
    )


class TxnProducer:
    """Records the transaction calls; ``fail`` maps a call name to the errors it raises, one per call."""

    def __init__(self, journal: list[str], fail: dict[str, list[KafkaException]] | None = None) -> None:
        self.journal = journal
        self.fail = fail or {}
        self.produced: list[tuple[str, str | None]] = []
        self.committed_offsets: list[list[TopicPartition]] = []

    def _call(self, name: str) -> None:
        self.journal.append(name)
        if self.fail.get(name):
            raise self.fail[name].pop(0)

    def init_transactions(self, timeout: float) -> None:
        self._call("init")

    def begin_transaction(self) -> None:
        self._call("begin")

    def produce(self, topic: str, *, key: str | None, value: bytes) -> None:
        self.produced.append((topic, key))

    def send_offsets_to_transaction(
        self, offsets: list[TopicPartition], group: object, timeout: float
    ) -> None:
        assert group is GROUP
        self._call("offsets")
        self.committed_offsets.append(offsets)

    def commit_transaction(self, timeout: float) -> None:
        self._call("commit")

    def abort_transaction(self, timeout: float) -> None:
        self._call("abort")

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0


def publisher(*producers: TxnProducer) -> TransactionalPublisher:
    queue = list(producers)
    factory: Callable[[], TxnProducer] = lambda: queue.pop(0)  # noqa: E731
    return TransactionalPublisher(factory, timeout_s=0.1, commit_retry_s=5.0)  # type: ignore[arg-type]


def messages() -> list[Outgoing]:
    return [Outgoing(topics.DLQ, "S-1", letter())]


def test_outputs_and_offsets_commit_in_one_transaction_after_one_init() -> None:
    journal: list[str] = []
    producer = TxnProducer(journal)
    pub = publisher(producer)
    assert isinstance(pub, OffsetCommittingPublisher)
    pub.publish_committing(messages(), OFFSETS, GROUP)
    pub.publish_committing(messages(), OFFSETS, GROUP)
    assert journal == ["init", "begin", "offsets", "commit", "begin", "offsets", "commit"]
    assert producer.produced == [(topics.DLQ, "S-1")] * 2


def test_an_abortable_failure_aborts_and_the_producer_is_kept() -> None:
    journal: list[str] = []
    producer = TxnProducer(journal, {"offsets": [txn_error(abortable=True)]})  # e.g. partitions lost
    pub = publisher(producer)
    with pytest.raises(StageUnavailable):
        pub.publish_committing(messages(), OFFSETS, GROUP)
    assert journal == ["init", "begin", "offsets", "abort"]
    pub.publish_committing(messages(), OFFSETS, GROUP)  # the retried batch, same producer
    assert journal[4:] == ["begin", "offsets", "commit"]


def test_a_commit_that_times_out_is_committed_again_not_aborted() -> None:
    journal: list[str] = []
    producer = TxnProducer(journal, {"commit": [txn_error(retriable=True), txn_error(retriable=True)]})
    publisher(producer).publish_committing(messages(), OFFSETS, GROUP)
    assert journal == ["init", "begin", "offsets", "commit", "commit", "commit"]
    assert "abort" not in journal


def test_a_fenced_producer_is_dropped_and_the_next_one_initialises_again() -> None:
    journal: list[str] = []
    fenced = TxnProducer(journal, {"commit": [txn_error(fatal=True)]})  # a newer worker with our id
    fresh = TxnProducer(journal)
    pub = publisher(fenced, fresh)
    with pytest.raises(StageUnavailable):
        pub.publish_committing(messages(), OFFSETS, GROUP)
    assert "abort" not in journal  # a fenced producer can do nothing more
    pub.publish_committing(messages(), OFFSETS, GROUP)
    assert journal == ["init", "begin", "offsets", "commit", "init", "begin", "offsets", "commit"]
    assert fresh.committed_offsets == [OFFSETS]


def test_a_failed_abort_drops_the_producer() -> None:
    journal: list[str] = []
    broken = TxnProducer(journal, {"begin": [txn_error()], "abort": [txn_error(retriable=True)]})
    fresh = TxnProducer(journal)
    pub = publisher(broken, fresh)
    with pytest.raises(StageUnavailable):
        pub.publish_committing(messages(), OFFSETS, GROUP)
    pub.publish_committing(messages(), OFFSETS, GROUP)
    assert journal == ["init", "begin", "abort", "init", "begin", "offsets", "commit"]


def test_no_transactions_while_kafka_cannot_start_them() -> None:
    journal: list[str] = []
    down = TxnProducer(journal, {"init": [txn_error(retriable=True)]})
    up = TxnProducer(journal)
    pub = publisher(down, up)
    with pytest.raises(StageUnavailable, match="cannot start transactions"):
        pub.publish_committing(messages(), OFFSETS, GROUP)
    pub.publish_committing(messages(), OFFSETS, GROUP)
    assert journal == ["init", "init", "begin", "offsets", "commit"]


def test_offsets_are_one_past_the_last_record_of_each_partition() -> None:
    records = [Record(topics.STUDIES, p, o, None, None) for p, o in ((0, 4), (1, 9), (0, 6), (0, 5))]
    assert sorted((tp.partition, tp.offset) for tp in _next_offsets(records)) == [(0, 7), (1, 10)]


class TxnConsumer(FakeConsumer):
    def consumer_group_metadata(self) -> object:
        return GROUP


class FakeTxnPublisher(FakePublisher):
    """Commits what a transaction carried only when it succeeds, like a read_committed reader sees it."""

    def __init__(self, journal: list[str]) -> None:
        super().__init__(journal)
        self.offsets: list[list[tuple[str, int, int]]] = []

    def publish_committing(
        self, messages: Sequence[Outgoing], offsets: Sequence[TopicPartition], group_metadata: object
    ) -> None:
        assert group_metadata is GROUP
        self.journal.append(f"txn:{len(messages)}")
        if self.failures:
            self.failures -= 1
            raise StageUnavailable("kafka", "transaction aborted: partitions lost")
        self.sent.extend(messages)
        self.offsets.append(sorted((tp.topic, tp.partition, tp.offset) for tp in offsets))

    def renew(self) -> None:
        self.journal.append("renew")


def test_the_worker_commits_its_offsets_in_the_transaction_and_retries_an_aborted_one(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    publisher = FakeTxnPublisher(rig.journal)
    rig.publisher = publisher
    messages = [study_message(rig.store, f"S-{i}", i) for i in range(3)]
    worker = rig.worker(messages)
    rig.consumer = TxnConsumer(rig.journal, messages)
    worker._consumer = rig.consumer  # type: ignore[assignment]
    publisher.failures = 1

    assert worker.step() is None  # aborted: nothing of it is visible, the batch is read again
    report = worker.step()

    assert report is not None and report.scored == 0 and report.unchanged == 3  # Redis kept the first write
    assert rig.consumer.commits == []  # never committed outside a transaction
    assert publisher.offsets == [[(topics.STUDIES, 0, 3)]]
    assert [m.key for m in publisher.of(topics.PREDICTIONS)] == ["S-0", "S-1", "S-2"]  # once each
    assert [e for e in rig.journal if e.startswith(("txn", "redis", "commit"))] == [
        "redis:3",
        "txn:3",
        "redis:3",
        "txn:3",
    ]


def test_renew_starts_the_next_transaction_on_a_fresh_producer() -> None:
    journal: list[str] = []
    first, second = TxnProducer(journal), TxnProducer(journal)
    pub = publisher(first, second)
    pub.publish_committing(messages(), OFFSETS, GROUP)
    pub.renew()  # the group changed (after a broker restart, say)
    pub.publish_committing(messages(), OFFSETS, GROUP)
    assert journal == ["init", "begin", "offsets", "commit", "init", "begin", "offsets", "commit"]
    assert first.committed_offsets == second.committed_offsets == [OFFSETS]
