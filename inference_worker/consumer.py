"""The consumer loop: micro-batch -> prepare -> Triton -> Redis -> Kafka outputs + commit.

A micro-batch is what one ``consume`` returns: up to ``max_batch`` messages, or fewer once ``max_wait_s``
has passed. Offsets are committed only after the worklist write and the delivery of every prediction and
dead letter of the batch (at-least-once). Between Kafka's ack and the commit the batch's studies are marked
published in Redis, so a batch whose commit was lost (a rebalance, a broker restart) publishes nothing twice.
Kafka transactions would make that exactly-once on the topics alone, but librdkafka 2.16's
``send_offsets_to_transaction`` hung past its timeout across a broker restart (librdkafka issues 5456, 5511).

Bounded work: the worker never reads ahead. It processes a batch to its commit before it consumes the next,
so at most one batch is in flight; a slow Triton simply slows the consuming (librdkafka's own prefetch queue
is capped by ``queued.max.messages.kbytes``, see ``app``). This is simpler than a pipeline with pause/resume
thresholds and loses nothing on 2 cores, where Triton uses the CPU the worker would prepare the next batch on.

Failures: if Triton, Redis or Kafka fail, nothing is committed. The worker pauses its partitions, waits
(exponential backoff) while still serving the group protocol, resumes, seeks back to the batch's first offsets
and reads it again, so it resumes by itself when the service returns and never holds work across a
rebalance. Rebalance callbacks run only inside ``consume``, between batches, so a revoked partition never has
processed-but-uncommitted work: its new owner re-reads from the last commit, and the worklist writes are
idempotent (a study is scored once, see ``worklist``).

Online evaluation (docs/serving.md): during a shadow or canary rollout a second Triton model, the challenger,
scores the batch too; each study gets a serving prediction (it orders the worklist) and a shadow one, both
decided by the study's first write. The worklist never waits on the challenger: if it cannot score, the
champion orders those studies alone.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from cxr_triage import topics
from cxr_triage.events import PredictionEventV1, utcnow
from cxr_triage.image_store import ImageStore
from cxr_triage.model.contract import ModelContract
from cxr_triage.model.rollout import NONE, RolloutState
from cxr_triage.sla import SlaPolicy
from inference_worker.batching import Prepared, Rejected, prepare_batch
from inference_worker.challenger import Challenger
from inference_worker.dead_letters import dead_letter
from inference_worker.errors import ModelMismatch, StageUnavailable
from inference_worker.lag import LagTracker
from inference_worker.metrics import WorkerMetrics
from inference_worker.predictions import Scored, ScoredBatch, build_predictions, record_key, study_readings
from inference_worker.publisher import EventPublisher, Outgoing
from inference_worker.records import Record
from inference_worker.triton_client import Scorer
from inference_worker.worklist import WorklistEntry, WorklistWriter

logger = logging.getLogger(__name__)


@dataclass
class Backoff:
    """Exponential delays with jitter, reset by a success."""

    initial_s: float = 0.5
    maximum_s: float = 10.0  # an outage costs at most ~10 s of extra delay once the service is back
    factor: float = 2.0
    _next: float = 0.0

    def next_delay(self) -> float:
        self._next = self.initial_s if self._next == 0 else min(self._next * self.factor, self.maximum_s)
        return self._next * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self._next = 0.0


@dataclass(frozen=True)
class BatchReport:
    consumed: int
    scored: int
    unchanged: int
    dead_lettered: int


class InferenceWorker:
    def __init__(
        self,
        *,
        consumer: Consumer,
        scorer: Scorer,
        worklist: WorklistWriter,
        publisher: EventPublisher,
        store: ImageStore,
        metrics: WorkerMetrics,
        model_name: str,
        sla: SlaPolicy,
        max_batch: int,
        max_wait_s: float,
        stop: threading.Event,
        priority_weights: Mapping[str, float] | None = None,
        backoff: Backoff | None = None,
        clock: Callable[[], datetime] = utcnow,
        lag_refresh_s: float = 5.0,
        challenger: Challenger | None = None,
    ) -> None:
        self._consumer = consumer
        self._scorer = scorer
        self._worklist = worklist
        self._publisher = publisher
        self._store = store
        self._metrics = metrics
        self._held: set[tuple[str, int]] = set()
        self._model_name = model_name
        self._sla = sla
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._stop = stop
        self._weights = priority_weights
        self._backoff = backoff or Backoff()
        self._clock = clock
        self._model_version: str | None = None
        self._totals: Counter[str] = Counter()
        self._last_progress = time.monotonic()
        self._error_logged_at: dict[int, float] = {}
        self._lag = LagTracker(metrics.consumer_lag, every_s=lag_refresh_s)
        self._challenger = challenger
        self._rollout: RolloutState | None = None

    def subscribe(self) -> None:
        self._consumer.subscribe(
            [topics.STUDIES], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    def run(self) -> None:
        """Process batches until ``stop`` is set; the batch in hand is finished (and committed) first."""
        self.subscribe()
        while not self._stop.is_set():
            self.step()
            self._lag.maybe_refresh(self._consumer)
            self._log_progress()

    def step(self) -> BatchReport | None:
        """Consume one micro-batch and process it; ``None`` when nothing came or the batch must be retried."""
        messages = self._consumer.consume(num_messages=self._max_batch, timeout=self._max_wait_s)
        records = self._records(messages)
        if not records:
            return None
        self._metrics.batch_size.observe(len(records))
        self._metrics.in_flight.set(len(records))
        try:
            report = self.process(records)
        except StageUnavailable as exc:
            self._metrics.batch_failures.labels(stage=exc.stage).inc()
            delay = self._backoff.next_delay()
            logger.warning(
                "batch not committed, will retry",
                extra={
                    "stage": exc.stage,
                    "error": str(exc),
                    "retry_in_s": round(delay, 2),
                    "size": len(records),
                },
            )
            self._wait_paused(delay, records)
            return None
        finally:
            self._metrics.in_flight.set(0)
            self._metrics.stage.state("idle")
        self._backoff.reset()
        return report

    def process(self, records: list[Record]) -> BatchReport:
        """Score, write, publish, then commit one batch; ``StageUnavailable`` leaves it uncommitted."""
        self._metrics.stage.state("scoring")
        contract = self._contract()
        rollout = self._rollout_state()
        batch = prepare_batch(
            records,
            store=self._store,
            input_size=contract.input_size,
            keep_source=rollout.active,
            reads=contract.reads,
        )
        readings = self._score(batch.prepared, contract) if batch.prepared else ScoredBatch()
        challenged = self._score_challenger(readings.scored, rollout)
        entries = [
            _entry(item, challenged.get(record_key(item.prepared)), rollout)
            for item in study_readings(readings.scored)
        ]
        self._metrics.stage.state("writing")
        outcomes = self._worklist.write(entries)

        written_at = self._clock()
        predictions: list[PredictionEventV1] = []
        shadows: list[PredictionEventV1] = []
        for entry, outcome in zip(entries, outcomes, strict=True):
            if outcome.published:
                continue  # a redelivered batch whose predictions Kafka already acknowledged: not sent twice
            if outcome.first:
                self._metrics.end_to_end_latency.observe(
                    (written_at - entry.study.received_at).total_seconds()
                )
                self._metrics.priority.labels(entry.prediction.model_version).observe(
                    entry.prediction.priority
                )
                self._metrics.tiers.labels(entry.tier.value).inc()
                if entry.cams is not None:
                    self._metrics.cams_stored.inc()
                predictions.append(outcome.applied_to(entry.prediction))
                if entry.shadow is not None:
                    shadows.append(entry.shadow)
                if rollout.active:
                    self._count_rollout(entry)
            else:
                # Scored before: republish the predictions as stored, so consumers see the same events; a late
                # image (amended) publishes the study again with it, its first images' readings unchanged.
                predictions.append(outcome.applied_to(entry.prediction))
                if outcome.shadow is not None and not outcome.amended:
                    shadows.append(outcome.shadow)
        rejected = batch.rejected + readings.rejected
        outgoing = (
            [Outgoing(topics.PREDICTIONS, p.study_id, p) for p in predictions]
            + [
                Outgoing(topics.PREDICTIONS, topics.shadow_key(p.study_id, p.model_version), p)
                for p in shadows
            ]
            + [Outgoing(topics.DLQ, r.study_id, dead_letter(r)) for r in rejected]
        )
        self._metrics.stage.state("publishing")
        self._publisher.publish(outgoing)
        # Between Kafka's ack and the commit: a commit lost to a rebalance or a broker restart then
        # redelivers a batch whose studies are known as published (with their shadows), and nothing is sent
        # twice.
        if predictions:
            self._worklist.mark_published([p.study_id for p in predictions])
        self._metrics.stage.state("committing")
        self._commit(records)

        changed = sum(outcome.changed for outcome in outcomes)
        report = BatchReport(len(records), changed, len(outcomes) - changed, len(rejected))
        self._account(report, rejected)
        return report

    def _rollout_state(self) -> RolloutState:
        state = NONE if self._challenger is None else self._challenger.state()
        if state != self._rollout:
            logger.info(
                "rollout in force",
                extra={
                    "mode": state.mode,
                    "challenger_version": state.challenger_version,
                    "champion_version": state.champion_version,
                    "fraction": state.fraction,
                },
            )
            self._metrics.rollout.info(
                {
                    "mode": state.mode,
                    "challenger_version": state.challenger_version,
                    "fraction": repr(state.fraction) if state.active else "",
                }
            )
            self._rollout = state
        return state

    def _score_challenger(
        self, scored: list[Scored], rollout: RolloutState
    ) -> dict[tuple[str, int, int], Scored]:
        """The challenger's predictions of the studies it scores (by study event); none when it cannot score.

        It reads the same images of each study as the champion did.

        The worklist never waits on a challenger: if its model fails, answers from another version or gives
        an unusable row, those studies are ordered by the champion alone (arm champion, no shadow) and the
        batch goes on; the next batch reads the rollout state again.
        """
        if self._challenger is None or not rollout.active:
            return {}
        chosen = [item for item in scored if rollout.scores_with_challenger(item.prediction.study_id)]
        if not chosen:
            return {}
        scorer = self._challenger.scorer
        try:
            contract = scorer.contract()
            images = np.stack([item.prepared.tensor_at(contract.input_size) for item in chosen])
            started = time.perf_counter()
            scores = scorer.score(images)
            self._metrics.challenger_latency.labels(mode=rollout.mode).observe(time.perf_counter() - started)
            answered = set(scores.model_versions)
            if answered != {contract.version} or contract.version != rollout.challenger_version:
                raise StageUnavailable(
                    "triton",
                    f"challenger answered as version(s) {sorted(answered)}, its config describes "
                    f"{contract.version} and the rollout names {rollout.challenger_version}",
                )
        except (StageUnavailable, ModelMismatch) as exc:
            self._metrics.challenger_failures.labels(mode=rollout.mode).inc()
            logger.warning(
                "challenger could not score; the champion orders this batch alone",
                extra={"mode": rollout.mode, "error": str(exc), "size": len(chosen)},
            )
            self._challenger.invalidate()
            return {}
        built = build_predictions(
            [item.prepared for item in chosen],
            scores,
            model_name=self._model_name,
            scored_at=self._clock(),
            tiers=contract.tiers(self._sla),
            threshold=contract.operating_threshold,
            weights=self._weights,
        )
        if built.rejected:
            self._metrics.challenger_failures.labels(mode=rollout.mode).inc()
            logger.warning(
                "challenger output unusable for some studies; the champion orders them alone",
                extra={"mode": rollout.mode, "count": len(built.rejected)},
            )
        return {record_key(item.prepared): item for item in study_readings(built.scored)}

    def _count_rollout(self, entry: WorklistEntry) -> None:
        self._metrics.rollout_predictions.labels(role="serving", arm=entry.prediction.arm).inc()
        if entry.shadow is not None:
            self._metrics.rollout_predictions.labels(role="shadow", arm=entry.shadow.arm).inc()

    def _contract(self) -> ModelContract:
        contract = self._scorer.contract()
        if contract.version != self._model_version:
            tiers = contract.tiers(self._sla)
            logger.info(
                "scoring with model",
                extra={
                    "model_name": self._model_name,
                    "model_version": contract.version,
                    "input_size": contract.input_size,
                    "tier_thresholds": tiers.source,
                    "urgent": tiers.urgent,
                    "critical": tiers.critical,
                },
            )
            self._metrics.model.info({"model_name": self._model_name, "model_version": contract.version})
            self._metrics.model_calibrated.set(1 if tiers.source == "model" else 0)
            self._model_version = contract.version
        return contract

    def _score(self, prepared: list[Prepared], contract: ModelContract) -> ScoredBatch:
        started = time.perf_counter()
        scores = self._scorer.score(np.stack([item.tensor for item in prepared]))
        self._metrics.triton_latency.observe(time.perf_counter() - started)
        if contract.version and set(scores.model_versions) != {contract.version}:
            # Another version answered (a switch that kept the input size): its own thresholds file these
            # studies. If Triton cannot say yet which contract that version has, the batch is scored again.
            self._scorer.invalidate()
            contract = self._contract()
            if set(scores.model_versions) != {contract.version}:
                raise StageUnavailable(
                    "triton",
                    f"scored by version(s) {sorted(set(scores.model_versions))}, "
                    f"Triton describes version {contract.version}",
                )
        return build_predictions(
            prepared,
            scores,
            model_name=self._model_name,
            scored_at=self._clock(),
            tiers=contract.tiers(self._sla),
            threshold=contract.operating_threshold,
            weights=self._weights,
        )

    def _commit(self, records: list[Record]) -> None:
        try:
            results = self._consumer.commit(offsets=_next_offsets(records), asynchronous=False)
        except KafkaException as exc:
            # The results are durable and idempotent: a lost commit only means this batch is read again.
            logger.warning("offset commit failed; the batch will be redelivered", extra={"error": str(exc)})
            return
        for tp in results or []:
            if tp.error is not None:
                logger.warning(
                    "offset commit failed for a partition",
                    extra={"topic": tp.topic, "partition": tp.partition, "error": str(tp.error)},
                )

    def _wait_paused(self, delay: float, records: list[Record]) -> None:
        """Pause every partition for ``delay`` while serving the group, then resume and rewind ``records``.

        ``consume`` keeps running so that a rebalance (a worker joins or dies) completes during an outage;
        a partition assigned meanwhile is not paused yet, so what it delivers is rewound and it is paused too.
        """
        self._consumer.pause(self._consumer.assignment())
        self._metrics.paused.set(1)
        deadline = time.monotonic() + delay
        try:
            while not self._stop.is_set() and (left := deadline - time.monotonic()) > 0:
                stray = self._records(
                    self._consumer.consume(num_messages=self._max_batch, timeout=min(left, 0.5))
                )
                if stray:
                    records = records + stray
                    self._consumer.pause(_partitions(stray))
        finally:
            # Resume first, then seek: a seek is applied to the fetch position whatever the pause state did.
            self._consumer.resume(self._consumer.assignment())
            self._metrics.paused.set(0)
            self._rewind(records)

    def _rewind(self, records: list[Record]) -> None:
        first: dict[tuple[str, int], int] = {}
        for record in records:
            key = (record.topic, record.partition)
            first[key] = min(first.get(key, record.offset), record.offset)
        for (topic, partition), offset in first.items():
            try:
                self._consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:  # revoked meanwhile: its new owner reads from the last commit
                logger.info(
                    "could not seek back", extra={"topic": topic, "partition": partition, "error": str(exc)}
                )

    def _records(self, messages: list[Message]) -> list[Record]:
        records = []
        for message in messages:
            error = message.error()
            if error is None:
                records.append(Record.from_message(message))
            elif error.fatal():
                raise KafkaException(error)
            elif error.code() != KafkaError._PARTITION_EOF:
                self._log_consumer_error(error)
        return records

    def _log_consumer_error(self, error: KafkaError, every_s: float = 30.0) -> None:
        # While a broker is down librdkafka reports the same error on every consume: say it once in a while.
        now = time.monotonic()
        if now - self._error_logged_at.get(error.code(), -every_s) >= every_s:
            self._error_logged_at[error.code()] = now
            logger.warning("consumer error", extra={"code": error.name(), "error": error.str()})

    def _account(self, report: BatchReport, rejected: list[Rejected]) -> None:
        self._metrics.scored.inc(report.scored)
        self._metrics.replayed.inc(report.unchanged)
        for item in rejected:
            self._metrics.dead_lettered.labels(reason=item.reason_class).inc()
            logger.warning(
                "message dead-lettered",
                extra={
                    **item.record.where,
                    "reason_class": item.reason_class,
                    "reason": item.reason,
                    "sha256": item.sha256,
                },
            )
        self._totals.update(
            consumed=report.consumed,
            scored=report.scored,
            unchanged=report.unchanged,
            dead_lettered=report.dead_lettered,
            batches=1,
        )
        logger.debug("batch committed", extra=report.__dict__)

    def _log_progress(self, every_s: float = 30.0) -> None:
        now = time.monotonic()
        if now - self._last_progress >= every_s:
            if self._totals:
                logger.info("progress", extra={**self._totals, "model_version": self._model_version})
            self._totals.clear()
            self._last_progress = now

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        logger.info("partitions assigned", extra={"partitions": _describe(partitions)})
        # Cooperative rebalancing hands over only what changes: the held set is kept here.
        self._held.update((tp.topic, tp.partition) for tp in partitions)
        self._metrics.assigned_partitions.set(len(self._held))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        logger.info("partitions revoked", extra={"partitions": _describe(partitions)})
        _clear_pause(consumer, partitions)
        self._let_go(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        logger.warning("partitions lost", extra={"partitions": _describe(partitions)})
        _clear_pause(consumer, partitions)
        self._let_go(partitions)

    def _let_go(self, partitions: list[TopicPartition]) -> None:
        self._held.difference_update((tp.topic, tp.partition) for tp in partitions)
        self._metrics.assigned_partitions.set(len(self._held))


def _clear_pause(consumer: Consumer, partitions: list[TopicPartition]) -> None:
    """Resume partitions on their way out: librdkafka keeps a partition's pause across a rebalance.

    A partition revoked during ``_wait_paused`` is not in the assignment that its end resumes; if the group
    later gave it back to this worker, it would come back paused and never be read again (its lag stuck).
    """
    try:
        consumer.resume(partitions)
    except KafkaException as exc:
        logger.debug("could not resume partitions on their way out", extra={"error": str(exc)})


def _entry(item: Scored, challenger: Scored | None, rollout: RolloutState) -> WorklistEntry:
    """The worklist entry of one study: which prediction serves (orders it, with its maps) and which is its
    shadow. Without the challenger's score the champion's serves, whatever the study's hash says."""
    study, champion = item.prepared.study, item.prediction
    if challenger is None:
        return WorklistEntry(study, champion, item.cams, image_cams=item.image_cams)
    arm = rollout.arm(champion.study_id)
    serving, shadow = (challenger, item) if arm == "canary" else (item, challenger)
    return WorklistEntry(
        study,
        serving.prediction.model_copy(update={"role": "serving", "arm": arm}),
        serving.cams,
        shadow=shadow.prediction.model_copy(update={"role": "shadow", "arm": arm}),
        image_cams=serving.image_cams,
    )


def _next_offsets(records: list[Record]) -> list[TopicPartition]:
    """The offsets to commit once ``records`` are done: one past the last of each partition."""
    next_offsets: dict[tuple[str, int], int] = {}
    for record in records:
        key = (record.topic, record.partition)
        next_offsets[key] = max(next_offsets.get(key, 0), record.offset + 1)
    return [TopicPartition(topic, partition, offset) for (topic, partition), offset in next_offsets.items()]


def _partitions(records: list[Record]) -> list[TopicPartition]:
    return [
        TopicPartition(topic, partition) for topic, partition in {(r.topic, r.partition) for r in records}
    ]


def _describe(partitions: list[TopicPartition]) -> list[str]:
    return [f"{tp.topic}[{tp.partition}]" for tp in partitions]
