"""The whole pipeline, timed: producer -> Kafka -> worker -> Triton -> Redis worklist + predictions topic.

Studies are validated and their images stored first, so that the timed window holds only what a radiology
department would see: from the first publish to the last worklist write. Each study's write time is the
Kafka timestamp of its prediction (the worker publishes it right after the Redis write commits), or the
moment this process first saw it on the worklist when no prediction was read.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import redis
from confluent_kafka import OFFSET_END, Consumer, KafkaError, TopicPartition

from bench.cpu import (
    WORKER_SAMPLES,
    component_pids,
    cpu_breakdown,
    scrape,
    snapshot,
    worker_activity,
)
from bench.stats import LatencySummary, rate, summarise_ms
from cxr_triage import topics
from cxr_triage.events import PredictionEventV1
from cxr_triage.image_store import open_image_store
from cxr_triage.ingest.pseudonym import pseudonymiser
from cxr_triage.ingest.publisher import EventPublisher
from cxr_triage.ingest.service import publish_images
from cxr_triage.ingest.validate import SUFFIX_FOR, PreparedImage, Rejection, prepare
from cxr_triage.redis_client import open_redis
from cxr_triage.redis_keys import RedisKeys
from cxr_triage.settings import Settings

logger = logging.getLogger(__name__)

Pattern = Literal["steady", "burst"]
POLL_INTERVAL_S = 0.05
DUPLICATE_GRACE_S = 2.0  # read the predictions topic a little longer: a replay would show up late


class PipelineError(RuntimeError):
    """The benchmark could not run (a file rejected, Kafka unreachable)."""


@dataclass(frozen=True)
class Published:
    study_id: str
    received_at: datetime
    published_at: float  # time.time()


@dataclass(frozen=True)
class PipelineResult:
    pattern: Pattern
    n: int
    rate_per_s: float | None
    written: int
    lost: int
    duplicated: int
    seconds: float
    studies_per_s: float
    e2e: LatencySummary | None  # worklist write - received_at
    e2e_scored: LatencySummary | None  # scored_at - received_at, as stored in Redis
    model_versions: list[str]
    worker_max_batch: int
    worker_max_wait_ms: int
    input_size: int
    lost_ids: list[str] = field(default_factory=list)
    cpu: dict[str, Any] = field(default_factory=dict)  # CPU-seconds per component over the run
    worker: dict[str, float] = field(default_factory=dict)  # batches, mean size, time inside Triton

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["e2e"] = self.e2e.as_dict() if self.e2e else None
        data["e2e_scored"] = self.e2e_scored.as_dict() if self.e2e_scored else None
        return data


def prepare_studies(paths: Sequence[Path], settings: Settings) -> list[PreparedImage]:
    """Validate every file and put its image in the store now, so that publishing is all that is timed."""
    store = open_image_store(settings)
    pseudonyms = pseudonymiser(settings)
    studies = []
    for path in paths:
        outcome = prepare(path, pseudonyms)
        if isinstance(outcome, Rejection):
            raise PipelineError(f"benchmark image rejected: {outcome.reason}")
        store.put(outcome.data, suffix=SUFFIX_FOR[outcome.content_type])  # idempotent: publish finds it there
        studies.append(outcome)
    if len({study.study_id for study in studies}) != len(studies):
        raise PipelineError("benchmark studies are not distinct: the producer would deduplicate them")
    return studies


def publish(
    studies: Sequence[PreparedImage], settings: Settings, *, pattern: Pattern, rate_per_s: float
) -> list[Published]:
    """Publish all at once (burst) or one every ``1 / rate_per_s`` seconds (steady)."""
    store = open_image_store(settings)
    published: list[Published] = []
    with EventPublisher(settings, client_id="cxr-bench") as publisher:
        started = time.monotonic()
        for index, study in enumerate(studies):
            if pattern == "steady":
                delay = started + index / rate_per_s - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            at = time.time()
            (event,) = publish_images([study], store=store, publisher=publisher, source="bench")
            published.append(Published(event.study_id, event.received_at, at))
        publisher.flush()
    return published


def prediction_offsets(settings: Settings) -> list[TopicPartition]:
    """The end of each partition of the predictions topic now: where this run's predictions will start."""
    consumer = _reader(settings)
    try:
        metadata = consumer.list_topics(topics.PREDICTIONS, timeout=10)
        partitions = sorted(metadata.topics[topics.PREDICTIONS].partitions)
        ends = []
        for partition in partitions:
            _low, high = consumer.get_watermark_offsets(
                TopicPartition(topics.PREDICTIONS, partition), timeout=10
            )
            ends.append(TopicPartition(topics.PREDICTIONS, partition, high if high >= 0 else OFFSET_END))
        return ends
    finally:
        consumer.close()


def _reader(settings: Settings) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": "cxr-bench-reader",  # never subscribes nor commits: assign() only
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )


def wait_for_worklist(
    client: redis.Redis, keys: RedisKeys, study_ids: Sequence[str], *, timeout_s: float
) -> dict[str, float]:
    """Poll until every study is on the worklist or ``timeout_s``; ``{study_id: first seen (time.time())}``."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    while len(seen) < len(study_ids) and time.monotonic() < deadline:
        pending = [study_id for study_id in study_ids if study_id not in seen]
        with client.pipeline(transaction=False) as pipe:
            for study_id in pending:
                pipe.zscore(keys.worklist, study_id)
            scores = pipe.execute()
        now = time.time()
        seen.update(
            {study_id: now for study_id, score in zip(pending, scores, strict=True) if score is not None}
        )
        if len(seen) < len(study_ids):
            time.sleep(POLL_INTERVAL_S)
    return seen


def read_predictions(
    settings: Settings, start: Sequence[TopicPartition], study_ids: set[str], *, timeout_s: float
) -> list[tuple[PredictionEventV1, float]]:
    """This run's predictions (with their Kafka timestamps, in seconds) from ``start`` to the end."""
    consumer = _reader(settings)
    consumer.assign(list(start))
    found: list[tuple[PredictionEventV1, float]] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + timeout_s
    try:
        while len(at_end) < len(start) and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            error, partition, value = message.error(), message.partition(), message.value()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF and partition is not None:
                    at_end.add(partition)
                    continue
                raise PipelineError(f"reading {topics.PREDICTIONS} failed: {error.str()}")
            at_end.discard(partition if partition is not None else -1)
            if value is None:
                continue
            prediction = PredictionEventV1.from_bytes(value)
            if prediction.study_id in study_ids:
                found.append((prediction, message.timestamp()[1] / 1000.0))
    finally:
        consumer.close()
    return found


def stored_scored_at(client: redis.Redis, keys: RedisKeys, study_ids: Sequence[str]) -> dict[str, float]:
    with client.pipeline(transaction=False) as pipe:
        for study_id in study_ids:
            pipe.hget(keys.study(study_id), "scored_at")
        values = pipe.execute()
    return {
        study_id: datetime.fromisoformat(value.decode()).timestamp()
        for study_id, value in zip(study_ids, values, strict=True)
        if value
    }


def run_pipeline(
    settings: Settings,
    paths: Sequence[Path],
    *,
    pattern: Pattern,
    input_size: int,
    rate_per_s: float = 2.0,
    timeout_s: float = 300.0,
) -> PipelineResult:
    """Publish one study per path, wait for the worklist, and measure."""
    studies = prepare_studies(paths, settings)
    keys = RedisKeys(settings.redis_key_prefix)
    client = open_redis(settings, socket_timeout=10.0)
    roots = {**component_pids(settings.run_dir), "bench": os.getpid()}
    metrics_urls = [
        f"{settings.local_url(settings.worker_metrics_port + index)}/metrics"
        for index in range(settings.worker_count)
    ]
    try:
        start = prediction_offsets(settings)
        metrics_before = _worker_samples(metrics_urls)
        cpu_before, began = snapshot(roots), time.monotonic()
        published = publish(studies, settings, pattern=pattern, rate_per_s=rate_per_s)
        ids = [item.study_id for item in published]
        seen = wait_for_worklist(client, keys, ids, timeout_s=timeout_s)
        cpu_after, window = snapshot(roots), time.monotonic() - began
        metrics_after = _worker_samples(metrics_urls)
        time.sleep(DUPLICATE_GRACE_S)
        scored_at = stored_scored_at(client, keys, ids)
    finally:
        client.close()
    predictions = read_predictions(settings, start, set(ids), timeout_s=60.0)
    result = summarise(
        published,
        seen,
        scored_at,
        predictions,
        settings=settings,
        pattern=pattern,
        rate_per_s=rate_per_s,
        input_size=input_size,
    )
    return replace(
        result,
        cpu=cpu_breakdown(cpu_before, cpu_after, window_s=window),
        worker=worker_activity(metrics_before, metrics_after, window_s=window),
    )


def _worker_samples(urls: Sequence[str]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for url in urls:
        for name, value in scrape(url, WORKER_SAMPLES).items():
            totals[name] = totals.get(name, 0.0) + value
    return totals


def summarise(
    published: Sequence[Published],
    seen: dict[str, float],
    scored_at: dict[str, float],
    predictions: Sequence[tuple[PredictionEventV1, float]],
    *,
    settings: Settings,
    pattern: Pattern,
    rate_per_s: float,
    input_size: int,
) -> PipelineResult:
    """Throughput, latencies, lost and duplicated studies from what was published and what came out."""
    per_version = Counter((prediction.study_id, prediction.model_version) for prediction, _ in predictions)
    duplicated = len({study_id for (study_id, _version), count in per_version.items() if count > 1})
    first_prediction: dict[str, float] = {}
    for prediction, timestamp in predictions:
        first_prediction[prediction.study_id] = min(
            timestamp, first_prediction.get(prediction.study_id, timestamp)
        )

    written_at = {
        item.study_id: first_prediction.get(item.study_id, seen[item.study_id])
        for item in published
        if item.study_id in seen
    }
    received = {item.study_id: item.received_at.timestamp() for item in published}
    e2e = [written_at[study_id] - received[study_id] for study_id in written_at]
    e2e_scored = [scored_at[study_id] - received[study_id] for study_id in scored_at]
    first_publish = min(item.published_at for item in published)
    seconds = max(written_at.values()) - first_publish if written_at else 0.0
    lost_ids = sorted(item.study_id for item in published if item.study_id not in seen)
    return PipelineResult(
        pattern=pattern,
        n=len(published),
        rate_per_s=rate_per_s if pattern == "steady" else None,
        written=len(written_at),
        lost=len(lost_ids),
        duplicated=duplicated,
        seconds=round(seconds, 3),
        studies_per_s=round(rate(len(written_at), seconds), 2),
        e2e=summarise_ms(e2e) if e2e else None,
        e2e_scored=summarise_ms(e2e_scored) if e2e_scored else None,
        model_versions=sorted({version for _study, version in per_version}),
        worker_max_batch=settings.worker_max_batch,
        worker_max_wait_ms=settings.worker_max_wait_ms,
        input_size=input_size,  # the served model's own
        lost_ids=lost_ids[:20],
    )
