"""The worker's batch handling with in-memory fakes for Kafka, Triton and Redis (no services needed)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import KafkaError, Message, TopicPartition

from cxr_triage import topics
from cxr_triage.events import DeadLetterEventV1, PredictionEventV1
from cxr_triage.labels import LABELS, NUM_LABELS
from inference_worker.consumer import Backoff
from inference_worker.errors import StageUnavailable
from tests.unit.worker_rig import NOW, RECEIVED, FakeConsumer, Rig, raw_message, study_message


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def test_bad_messages_are_dead_lettered_while_the_others_are_scored(rig: Rig) -> None:
    store = rig.store
    text = b"this is not an image at all" * 4
    messages = [
        study_message(store, "S-good-1", 0),
        raw_message(b"{not json", 1, key=b"S-garbage"),
        study_message(store, "S-good-2", 2),
        study_message(store, "S-missing", 3, image_uri=(store.root / "ab" / "cd" / ("ab" * 32)).as_uri()),
        study_message(store, "S-tampered", 4, sha256="0" * 64),
        study_message(store, "S-text", 5, data=text),
        raw_message(None, 6),
        study_message(store, "S-good-3", 7),
    ]
    report = rig.worker(messages).step()

    assert report is not None
    assert (report.consumed, report.scored, report.unchanged, report.dead_lettered) == (8, 3, 0, 5)
    predictions = [
        PredictionEventV1.model_validate(m.event.model_dump()) for m in rig.publisher.of(topics.PREDICTIONS)
    ]
    assert [p.study_id for p in predictions] == ["S-good-1", "S-good-2", "S-good-3"]
    assert all(
        p.model_version == "1" and p.scored_at == NOW and p.received_at == RECEIVED for p in predictions
    )
    assert [m.key for m in rig.publisher.of(topics.PREDICTIONS)] == ["S-good-1", "S-good-2", "S-good-3"]

    letters = {m.event.original_offset: m.event for m in rig.publisher.of(topics.DLQ)}  # type: ignore[attr-defined]
    assert sorted(letters) == [1, 3, 4, 5, 6]
    assert all(isinstance(d, DeadLetterEventV1) and d.stage == "worker" for d in letters.values())
    assert letters[1].error_type.startswith("invalid_event:") and letters[1].study_id == "S-garbage"
    assert letters[1].original == "{not json" and letters[1].original_topic == topics.STUDIES
    assert letters[3].error_type == "image_unavailable:ImageNotFound" and letters[3].study_id == "S-missing"
    assert letters[4].error_type.startswith("checksum_mismatch:") and letters[4].sha256 == "0" * 64
    assert letters[5].error_type == "image_rejected:ImageRejected" and "signature" in letters[5].reason
    assert letters[6].error_type == "invalid_event:EmptyMessage" and letters[6].original is None
    assert json.loads(letters[5].original or "")["study_id"] == "S-text"

    # one Triton call for the good ones; durable writes, then outputs, then the commit
    assert rig.journal == ["triton:3", "redis:3", "kafka:8", "published:3", "commit"]
    assert rig.consumer is not None and rig.consumer.commits == [[(topics.STUDIES, 0, 8)]]
    assert rig.metric("cxr_worker_studies_scored_total") == 3
    assert rig.metric("cxr_worker_studies_dead_lettered_total", reason="image_rejected") == 1
    assert rig.metric("cxr_worker_studies_dead_lettered_total", reason="invalid_event") == 2
    assert rig.metric("cxr_worker_batch_size_count") == 1
    assert rig.metric("cxr_worker_end_to_end_latency_seconds_sum") == pytest.approx(3 * 2.0)
    assert rig.metric("cxr_worker_model_info", model_name="cxr_classifier", model_version="1") == 1
    assert rig.metric("cxr_worker_in_flight") == 0


def test_priority_and_probabilities_follow_the_model(rig: Rig) -> None:
    urgent = np.full(NUM_LABELS, 0.05, dtype=np.float32)
    urgent[LABELS.index("No Finding")] = 0.7
    urgent[LABELS.index("Pneumothorax")] = 0.95
    normal = np.full(NUM_LABELS, 0.02, dtype=np.float32)
    normal[LABELS.index("No Finding")] = 0.97
    rig.scorer.rows = {0: normal, 1: urgent}
    rig.worker([study_message(rig.store, "S-normal", 0), study_message(rig.store, "S-urgent", 1)]).step()
    by_id = {m.event.study_id: m.event for m in rig.publisher.of(topics.PREDICTIONS)}  # type: ignore[attr-defined]
    assert by_id["S-urgent"].priority == pytest.approx(0.95)
    assert by_id["S-normal"].priority == pytest.approx(0.03, abs=1e-6)
    assert list(by_id["S-urgent"].probabilities) == list(LABELS)


def test_batches_of_a_whole_batch_all_bad_still_commit(rig: Rig) -> None:
    worker = rig.worker([raw_message(b"[]", 0), raw_message(b"null", 1)])
    report = worker.step()
    assert report is not None and report.dead_lettered == 2
    assert rig.journal == ["redis:0", "kafka:2", "commit"]  # no Triton call for an empty batch


def test_triton_failure_commits_nothing_and_the_batch_is_retried(rig: Rig) -> None:
    messages = [study_message(rig.store, f"S-{i}", i // 2, partition=i % 2) for i in range(4)]
    worker = rig.worker(messages)
    rig.scorer.failures = 2

    assert worker.step() is None
    assert worker.step() is None
    assert rig.consumer is not None
    assert rig.consumer.commits == [] and rig.publisher.sent == [] and rig.worklist.stored == {}
    assert rig.consumer.seeks[:2] == [(topics.STUDIES, 0, 0), (topics.STUDIES, 1, 0)]
    assert rig.metric("cxr_worker_batch_failures_total", stage="triton") == 2

    report = worker.step()  # Triton is back: the same messages, scored once, committed once
    assert report is not None and report.scored == 4
    assert rig.consumer.commits == [[(topics.STUDIES, 0, 2), (topics.STUDIES, 1, 2)]]
    assert sorted(m.key or "" for m in rig.publisher.of(topics.PREDICTIONS)) == ["S-0", "S-1", "S-2", "S-3"]
    assert rig.journal.count("commit") == 1 and rig.journal[-1] == "commit"


@pytest.mark.parametrize("stage", ["redis", "kafka"])
def test_write_or_publish_failure_commits_nothing(rig: Rig, stage: str) -> None:
    messages = [study_message(rig.store, "S-1", 0), raw_message(b"bad", 1)]
    worker = rig.worker(messages)
    if stage == "redis":
        rig.worklist.failures = 1
    else:
        rig.publisher.failures = 1
    assert worker.step() is None
    assert rig.consumer is not None and rig.consumer.commits == []
    assert "commit" not in rig.journal
    if stage == "redis":
        assert rig.publisher.sent == []  # nothing announced that is not in the worklist

    assert worker.step() is not None
    assert rig.consumer.commits == [[(topics.STUDIES, 0, 2)]]
    assert len(rig.publisher.of(topics.DLQ)) == 1


def test_a_replay_of_a_batch_kafka_never_acknowledged_republishes_the_same_prediction(rig: Rig) -> None:
    message = study_message(rig.store, "S-1", 0)
    worker = rig.worker([message])
    rig.publisher.failures = 1  # written to Redis, then Kafka refused the prediction: not published
    assert worker.step() is None
    assert rig.publisher.of(topics.PREDICTIONS) == []

    replay = rig.worker([message])
    replay._clock = lambda: NOW + timedelta(hours=1)  # a later replay
    report = replay.step()
    assert report is not None and (report.scored, report.unchanged) == (0, 1)
    (sent,) = rig.publisher.of(topics.PREDICTIONS)
    assert sent.event.scored_at == NOW  # the prediction as stored first, not re-scored  # type: ignore[attr-defined]
    assert rig.metric("cxr_worker_studies_unchanged_total") == 1


def test_a_replay_of_a_batch_kafka_acknowledged_publishes_nothing_twice(rig: Rig) -> None:
    # The commit was lost (a rebalance after a broker restart): the batch comes again, already published.
    message = study_message(rig.store, "S-1", 0)
    rig.worker([message]).step()
    assert rig.journal[-2:] == ["published:1", "commit"]  # marked between Kafka's ack and the commit
    report = rig.worker([message]).step()
    assert report is not None and (report.scored, report.unchanged) == (0, 1)
    assert len(rig.publisher.of(topics.PREDICTIONS)) == 1
    assert rig.journal.count("commit") == 2 and rig.journal[-1] == "commit"  # the replay is still committed


def test_a_version_switch_does_not_rescore_a_study_already_scored(rig: Rig) -> None:
    message = study_message(rig.store, "S-1", 0)
    rig.publisher.failures = 1  # scored and stored by version 1, but Kafka never acknowledged it
    rig.worker([message]).step()
    first = rig.worklist.stored["S-1"]

    rig.scorer.version = "2"  # the served version changed before the study was read again (a replay)
    rig.scorer.rows = {0: np.full(NUM_LABELS, 0.9, dtype=np.float32)}
    report = rig.worker([message, study_message(rig.store, "S-new", 1)]).step()
    assert report is not None and (report.scored, report.unchanged) == (1, 1)
    by_id = {m.event.study_id: m.event for m in rig.publisher.of(topics.PREDICTIONS)}  # type: ignore[attr-defined]
    assert (by_id["S-1"].model_version, by_id["S-1"].scored_at) == (
        first.model_version,
        first.scored_at,
    )  # version 1's
    assert by_id["S-new"].model_version == "2"
    assert rig.metric("cxr_worker_model_info", model_name="cxr_classifier", model_version="2") == 1


def test_activation_maps_go_with_the_first_write_only(rig: Rig) -> None:
    maps = np.zeros((NUM_LABELS, 2, 3), dtype=np.float32)
    maps[:, 1, 2] = 5.0
    rig.scorer.cams = maps
    message = study_message(rig.store, "S-1", 0)
    rig.worker([message]).step()
    rig.worker([message]).step()  # a replay stores nothing new
    (entry,) = rig.worklist.entries
    assert entry.cams is not None and (entry.cams.height, entry.cams.width) == (2, 3)
    stored = np.frombuffer(entry.cams.data, dtype=np.float16).reshape(NUM_LABELS, 2, 3)
    assert stored[:, 1, 2].tolist() == [1.0] * NUM_LABELS and stored.sum() == NUM_LABELS
    assert rig.metric("cxr_worker_cams_stored_total") == 1


def test_a_model_without_maps_stores_none(rig: Rig) -> None:
    rig.scorer.cams = np.zeros((NUM_LABELS, 2, 2), dtype=np.float32)
    rig.worker([study_message(rig.store, "S-1", 0)]).step()
    assert rig.worklist.entries[0].cams is None
    assert rig.metric("cxr_worker_cams_stored_total") == 0


def test_while_waiting_to_retry_the_partitions_are_paused_then_rewound(rig: Rig) -> None:
    messages = [study_message(rig.store, f"S-{i}", i // 2, partition=i % 2) for i in range(4)]
    worker = rig.worker(messages)
    worker._backoff = Backoff(initial_s=0.05, maximum_s=0.05)
    rig.scorer.failures = 1
    assert rig.consumer is not None
    during: list[tuple[set[int], float]] = []
    rig.consumer.on_consume.append(lambda c: during.append((set(c.paused), rig.metric("cxr_worker_paused"))))

    assert worker.step() is None
    assert during[1:] and all(paused == {0, 1} and flag == 1 for paused, flag in during[1:])
    assert rig.journal[:3] == ["triton:4", "pause:[0, 1]", "resume:[0, 1]"]
    assert sorted(rig.consumer.seeks) == [(topics.STUDIES, 0, 0), (topics.STUDIES, 1, 0)]
    assert rig.consumer.paused == set() and rig.metric("cxr_worker_paused") == 0

    report = worker.step()
    assert report is not None and report.scored == 4
    assert rig.consumer.commits == [[(topics.STUDIES, 0, 2), (topics.STUDIES, 1, 2)]]


def test_a_partition_assigned_during_the_pause_is_paused_and_rewound(rig: Rig) -> None:
    first = [study_message(rig.store, "S-0", 0, partition=0)]
    worker = rig.worker(first)
    worker._backoff = Backoff(initial_s=0.05, maximum_s=0.05)
    rig.scorer.failures = 1
    assert rig.consumer is not None
    late = [study_message(rig.store, f"S-late-{i}", i, partition=3) for i in range(2)]

    def assign_partition_3(consumer: FakeConsumer) -> None:
        if 3 not in consumer.log and consumer.paused:  # a rebalance hands over partition 3 mid-pause
            consumer.log[3] = late
            consumer.next[3] = 0

    rig.consumer.on_consume.append(assign_partition_3)
    assert worker.step() is None
    assert "pause:[3]" in rig.journal
    assert (topics.STUDIES, 3, 0) in rig.consumer.seeks and rig.journal.count("triton:1") == 1

    reports = [worker.step(), worker.step()]
    assert sum(r.scored for r in reports if r is not None) == 3
    assert sorted(m.key or "" for m in rig.publisher.of(topics.PREDICTIONS)) == [
        "S-0",
        "S-late-0",
        "S-late-1",
    ]


def test_consumer_lag_is_reported_per_partition(rig: Rig) -> None:
    messages = [study_message(rig.store, f"S-{i}", i // 2, partition=i % 2) for i in range(6)]
    worker = rig.worker(messages, max_batch=4)
    assert rig.consumer is not None
    rig.consumer.after_commit.append(rig.stop)
    worker.run()  # one batch of 4 (the fake takes partition 0's three first), then stop; lag refreshed once
    lag = {
        p: rig.metrics.registry.get_sample_value(
            "cxr_worker_consumer_lag", {"topic": topics.STUDIES, "partition": p}
        )
        for p in ("0", "1")
    }
    assert lag == {"0": 0, "1": 2}


def test_invalid_model_output_dead_letters_only_that_study(rig: Rig) -> None:
    rig.scorer.rows = {1: np.full(NUM_LABELS, np.nan, dtype=np.float32)}
    messages = [study_message(rig.store, f"S-{i}", i) for i in range(3)]
    report = rig.worker(messages).step()
    assert report is not None and (report.scored, report.dead_lettered) == (2, 1)
    (letter,) = rig.publisher.of(topics.DLQ)
    assert letter.event.error_type.startswith("invalid_output:")  # type: ignore[attr-defined]
    assert letter.key == "S-1"


def test_run_finishes_and_commits_the_batch_in_hand_when_stopped(rig: Rig) -> None:
    messages = [study_message(rig.store, f"S-{i}", i) for i in range(5)]
    worker = rig.worker(messages, max_batch=2)
    assert rig.consumer is not None
    rig.consumer.after_commit.append(rig.stop)  # SIGTERM arrives while the first batch is processed
    worker.run()
    assert rig.consumer.commits == [[(topics.STUDIES, 0, 2)]]
    assert len(rig.publisher.of(topics.PREDICTIONS)) == 2


def test_consumer_errors_are_skipped(rig: Rig) -> None:
    error = Message(topic=topics.STUDIES, partition=0, error=KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
    worker = rig.worker([])
    assert rig.consumer is not None
    rig.consumer.log = {0: [error]}
    rig.consumer.next = {0: 0}
    assert worker.step() is None
    assert rig.journal == []


def test_stage_unavailable_names_its_stage() -> None:
    exc = StageUnavailable("redis", "down")
    assert exc.stage == "redis" and str(exc) == "redis: down"


def test_declared_content_type_must_match_the_file(rig: Rig) -> None:
    message = study_message(rig.store, "S-1", 0, content_type="image/jpeg")
    rig.worker([message]).step()
    (letter,) = rig.publisher.of(topics.DLQ)
    assert letter.event.reason == "the file is image/png but the event says image/jpeg"  # type: ignore[attr-defined]


def test_the_partitions_a_worker_holds_follow_cooperative_rebalances(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    worker = rig.worker([])
    consumer = rig.consumer
    held = "cxr_worker_assigned_partitions"
    worker._on_assign(consumer, [TopicPartition(topics.STUDIES, p) for p in (0, 1)])  # type: ignore[arg-type]
    worker._on_assign(consumer, [TopicPartition(topics.STUDIES, 3)])  # type: ignore[arg-type]  # incremental
    assert rig.metric(held) == 3
    worker._on_revoke(consumer, [TopicPartition(topics.STUDIES, 1)])  # type: ignore[arg-type]
    assert rig.metric(held) == 2
    worker._on_lost(consumer, [TopicPartition(topics.STUDIES, p) for p in (0, 3)])  # type: ignore[arg-type]
    assert rig.metric(held) == 0


def test_the_stage_metric_names_the_service_the_batch_waits_on(rig: Rig) -> None:
    seen: list[str] = []

    def stage_now() -> str:
        states = ("idle", "scoring", "writing", "publishing", "committing")
        return next(s for s in states if rig.metric("cxr_worker_stage", cxr_worker_stage=s) == 1)

    def watching(call):  # type: ignore[no-untyped-def]
        def wrapped(*args, **kwargs):  # type: ignore[no-untyped-def]
            seen.append(stage_now())
            return call(*args, **kwargs)

        return wrapped

    worker = rig.worker([study_message(rig.store, "S-1", 0)])
    assert rig.consumer is not None
    rig.scorer.score = watching(rig.scorer.score)  # type: ignore[method-assign]
    rig.worklist.write = watching(rig.worklist.write)  # type: ignore[method-assign]
    rig.publisher.publish = watching(rig.publisher.publish)  # type: ignore[method-assign]
    rig.consumer.commit = watching(rig.consumer.commit)  # type: ignore[method-assign]

    assert worker.step() is not None
    assert seen == ["scoring", "writing", "publishing", "committing"]
    assert stage_now() == "idle"
