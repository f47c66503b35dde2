"""The processors' Kafka side: agents, the join table, timers and the /metrics page, wired onto one app.

Topology (docs/feedback-loop.md draws it):

- ``rekey``: ``cxr.verdicts.v1`` (key = study:radiologist) -> ``<app id>-verdicts-by-study-repartition``
  (key = study id): Faust's group_by, done by hand so that a malformed verdict goes to the DLQ.
- ``join``: studies + predictions + re-keyed verdicts, co-partitioned by study id, into the ``join`` table
  (one ``join.JoinState`` per study, changelogged) -> ``cxr.feedback.v1`` and ``cxr.dlq.v1``.
- ``sink``: ``cxr.feedback.v1`` -> the feedback store (idempotent upsert) -> the retrain trigger.
- ``results``: ``cxr.training-results.v1`` -> settles the pending training request.
- ``decisions``: ``cxr.model-decisions.v1`` -> the rollout judged (operators start and stop it; the policy's
  own promote / rollback ends it).
- timers: unmatched verdicts past their wait -> DLQ; online metrics -> ``cxr.metrics.v1``; drift ->
  ``cxr.drift.v1``; any of them may publish one ``cxr.training-requests.v1``.

Delivery is at-least-once: Faust commits a source offset only after the producer flushed what the event
caused, and every sink is idempotent (see the docs for why not Kafka transactions).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

import faust
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from cxr_triage import topics
from cxr_triage.events import (
    DeadLetterEventV1,
    Event,
    FeedbackEventV1,
    ModelDecisionEventV1,
    PredictionEventV1,
    StudyEventV1,
    TrainingResultEventV1,
    VerdictEventV1,
)
from stream_processors import join
from stream_processors.config import ProcessorSettings
from stream_processors.drift import InputSample
from stream_processors.join_index import JoinIndex
from stream_processors.kafka_metadata import keep_tracked
from stream_processors.monitors import Monitors

logger = logging.getLogger(__name__)

# How often the metrics timer looks for new feedback rows (metrics follow new rows within about this).
_METRICS_POLL_S = 1.0


def repartition_topic(settings: ProcessorSettings) -> str:
    return f"{settings.processors_app_id}-verdicts-by-study-repartition"


def shadow_repartition_topic(settings: ProcessorSettings) -> str:
    return f"{settings.processors_app_id}-shadow-by-study-repartition"


def wire(app: faust.App, settings: ProcessorSettings, monitors: Monitors) -> None:
    raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
    by_study = repartition_topic(settings)
    shadow_by_study = shadow_repartition_topic(settings)
    verdicts = app.topic(topics.VERDICTS, **raw)
    # internal=True makes Faust create the repartition topic (co-partitioned: the same partition count);
    # the two source topics exist already and are left as they are.
    join_input = app.topic(
        topics.STUDIES,
        topics.PREDICTIONS,
        by_study,
        shadow_by_study,
        internal=True,
        partitions=settings.kafka_partitions,
        **raw,
    )
    verdicts_by_study = app.topic(by_study, **raw)
    shadows_by_study = app.topic(shadow_by_study, **raw)
    decisions_topic = app.topic(topics.MODEL_DECISIONS, **raw)
    feedback = app.topic(topics.FEEDBACK, **raw)
    results = app.topic(topics.TRAINING_RESULTS, **raw)
    dlq = app.topic(topics.DLQ, **raw)
    metrics_topic = app.topic(topics.METRICS, **raw)
    drift_topic = app.topic(topics.DRIFT, **raw)
    requests = app.topic(topics.TRAINING_REQUESTS, **raw)
    # Keyed by study id with the producers' partitioner, so writes from the expiry timer (outside any event)
    # land on the partition of the study's source events, as writes from the join agent do.
    table = app.Table(
        "join",
        default=None,
        partitions=settings.kafka_partitions,
        use_partitioner=True,
        key_type=bytes,  # raw study id bytes, as the producers key it; values are JSON
    )
    request_lock = asyncio.Lock()
    # Held from reading a study's state to writing it back, by the join agent and by the expiry timer: each
    # awaits Kafka's ack of what it publishes before the write, and the other must not write in between.
    join_lock = asyncio.Lock()
    index = JoinIndex()

    # Every topic this app writes to (the table's changelog included): see kafka_metadata.
    outputs = [
        table.changelog_topic.get_topic_name(),
        *(t.get_topic_name() for t in (verdicts_by_study, shadows_by_study, feedback, dlq)),
        *(t.get_topic_name() for t in (metrics_topic, drift_topic, requests)),
    ]

    async def know_outputs() -> None:
        await keep_tracked(cast(Any, app.producer)._ensure_producer().client, outputs)

    @app.task
    async def track_outputs() -> None:
        """From the start: a topic sent to before the first table write is tracked too."""
        await know_outputs()

    metrics_due = {"dirty": True, "last": 0.0}

    async def send(topic: faust.TopicT, key: str, event: Event) -> Any:
        """Queue ``event``; the returned future resolves once Kafka acknowledged it."""
        return await topic.send(key=key.encode(), value=event.to_bytes())

    async def dead_letter(event: DeadLetterEventV1, label: str) -> Any:
        delivered = await send(dlq, event.study_id or "processor", event)
        monitors.metrics.dead_lettered.labels(reason=label).inc()
        return delivered

    async def invalid(message: faust.types.Message, exc: ValidationError) -> None:
        await dead_letter(
            DeadLetterEventV1(
                stage="processor",
                reason=f"invalid event: {exc.error_count()} validation error(s)",
                error_type=type(exc).__name__,
                original=message.value.decode(errors="replace") if message.value else None,
                original_topic=message.topic,
                original_partition=message.partition,
                original_offset=message.offset,
            ),
            "invalid_event",
        )

    async def maybe_request() -> None:
        """Publish the trigger's request, if it decides one (or holds one recorded but unpublished)."""
        async with request_lock:
            request = await asyncio.to_thread(monitors.check_trigger)
            if request is not None:
                delivered = await requests.send(key=request.request_id.encode(), value=request.to_bytes())
                await delivered  # in Kafka before it is marked published: a crash before this republishes it
                await asyncio.to_thread(monitors.mark_published, request)
            monitors.metrics.trigger_checks.inc()

    def load(key: str) -> join.JoinState:
        value = table.get(key.encode())
        return join.JoinState() if value is None else join.JoinState.model_validate(value)

    async def apply(key: str, before: join.JoinState, step: join.Step) -> None:
        """Queue what the step caused, then the study's new state; Faust flushes both before it commits.

        The agent does not wait for Kafka's acks here (an agent awaiting an ack can hold up a rebalance). A
        crash after the table write but before the feedback's delivery leaves the source offset uncommitted,
        and the replayed event against a state that says "joined" publishes the feedback again (``join``:
        replays re-emit; the sinks are idempotent).
        """
        for example in step.feedback:
            await send(feedback, example.key, example)
            monitors.metrics.feedback_published.inc()
        for dead in step.dead_letters:
            await dead_letter(dead, "unmatched_verdict")
        if step.state != before:
            await know_outputs()
            state = step.state.model_copy(update={"updated_at": time.time()})
            table[key.encode()] = state.model_dump(mode="json")
            index.update(key.encode(), state, now=time.time())

    def add_drift_sample(state: join.JoinState) -> join.JoinState:
        """Pair the input's summary with its prediction's priority once both are known (either order)."""
        if state.input_sample is None or state.prediction is None:
            return state
        if state.prediction.arm == "champion":
            # A canary-ordered study's priority is another model's: not the champion's drift.
            monitors.add_drift_sample(InputSample.model_validate(state.input_sample), state.prediction)
        return state.model_copy(update={"input_sample": None})

    def with_state(step: join.Step, state: join.JoinState) -> join.Step:
        return join.Step(state, step.feedback, step.dead_letters)

    @app.agent(verdicts, name="rekey")
    async def rekey(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            try:
                verdict = VerdictEventV1.from_bytes(event.value)
            except ValidationError as exc:
                await invalid(event.message, exc)
                continue
            await verdicts_by_study.send(key=verdict.study_id.encode(), value=event.value)

    @app.agent(join_input, name="join")
    async def join_agent(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            source = event.message.topic
            try:
                if source == topics.STUDIES:
                    study = StudyEventV1.from_bytes(event.value)
                    sample = await asyncio.to_thread(monitors.summarise_input, study)
                    async with join_lock:
                        before = load(study.study_id)
                        step = join.on_study(before, study)
                        if sample is not None:
                            summary = sample.model_dump(mode="json")
                            step = with_state(
                                step,
                                add_drift_sample(step.state.model_copy(update={"input_sample": summary})),
                            )
                        await apply(study.study_id, before, step)
                elif source == topics.PREDICTIONS or source == shadow_by_study:
                    prediction = PredictionEventV1.from_bytes(event.value)
                    if prediction.role == "shadow" and source == topics.PREDICTIONS:
                        # Keyed topics.shadow_key, so on another partition than its study: re-keyed by
                        # study id first, as the verdicts are, so that the join stays co-partitioned.
                        await shadows_by_study.send(key=prediction.study_id.encode(), value=event.value)
                        continue
                    await asyncio.to_thread(monitors.observe_prediction, prediction)
                    async with join_lock:
                        before = load(prediction.study_id)
                        step = join.on_prediction(before, prediction)
                        step = with_state(step, add_drift_sample(step.state))
                        await apply(prediction.study_id, before, step)
                else:
                    verdict = VerdictEventV1.from_bytes(event.value)
                    async with join_lock:
                        before = load(verdict.study_id)
                        step = join.on_verdict(before, verdict, now=time.time())
                        await apply(verdict.study_id, before, step)
            except ValidationError as exc:
                await invalid(event.message, exc)

    @app.agent(feedback, name="sink")
    async def sink(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            try:
                example = FeedbackEventV1.from_bytes(event.value)
            except ValidationError as exc:
                await invalid(event.message, exc)
                continue
            if await asyncio.to_thread(monitors.store_feedback, example):
                metrics_due["dirty"] = True
                await maybe_request()

    @app.agent(results, name="results")
    async def on_result(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            try:
                result = TrainingResultEventV1.from_bytes(event.value)
            except ValidationError as exc:
                await invalid(event.message, exc)
                continue
            if await asyncio.to_thread(monitors.settle, result):
                await maybe_request()

    @app.agent(decisions_topic, name="decisions")
    async def on_decision(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            try:
                decision = ModelDecisionEventV1.from_bytes(event.value)
            except ValidationError as exc:
                await invalid(event.message, exc)
                continue
            if await asyncio.to_thread(monitors.observe_decision, decision):
                metrics_due["dirty"] = True

    @app.timer(settings.unmatched_check_interval_s)
    async def expire_unmatched() -> None:
        recovery = cast(Any, app.tables).recovery  # TableManager's, not on its abstract type
        if not recovery.completed.is_set():
            return  # a write now could be overwritten by the changelog still being replayed
        now = time.time()
        if not index.built:
            # Once per start, after recovery: the only full scan; table writes keep the index current after.
            index.rebuild(
                ((key, join.JoinState.model_validate(value)) for key, value in list(table.items()) if value),
                now=now,
            )
        dead: list[tuple[bytes, DeadLetterEventV1]] = []
        for key in list(index.waiting):
            state = load(key.decode())
            step = join.expire(
                state,
                now=now,
                wait_s=settings.unmatched_verdict_wait_s,
                settled_ttl_s=settings.join_settled_ttl_s,
            )
            dead.extend((key, letter) for letter in step.dead_letters)
        if dead:
            # In Kafka first, then off the table: a crash in between dead-letters them again after the
            # restart (an operational topic: a duplicate is harmless), never drops a verdict silently.
            deliveries = [await dead_letter(letter, "unmatched_verdict") for _, letter in dead]
            for delivered in deliveries:
                await delivered
            await know_outputs()
            async with join_lock:
                for key in {key for key, _ in dead}:
                    current = load(key.decode())
                    # Re-read: the agent may have joined or replaced a verdict while the DLQ was acked.
                    kept = join.drop_waiting(current, [letter for k, letter in dead if k == key])
                    if kept != current:
                        kept = kept.model_copy(update={"updated_at": now})
                        table[key] = kept.model_dump(mode="json")
                        index.update(key, kept, now=now)
            logger.warning("unmatched verdicts dead-lettered", extra={"count": len(dead)})
        pruned = await prune_settled(now)
        await asyncio.to_thread(
            monitors.record_join_status,
            waiting=sum(join.waiting_count(load(key.decode())) for key in index.waiting),
            dead_lettered=len(dead),
            settled=len(index),
            pruned=pruned,
        )

    async def prune_settled(now: float) -> int:
        """Drop the studies settled longer than the TTL ago (a changelog tombstone each): a bounded table."""
        due = index.settled_before(now - settings.join_settled_ttl_s)
        if not due:
            return 0
        pruned = 0
        await know_outputs()
        async with join_lock:
            for key in due:
                value = table.get(key)
                state = None if value is None else join.JoinState.model_validate(value)
                if state is None:
                    index.forget(key)
                    continue
                if not join.settled(state) or (state.updated_at or now) >= now - settings.join_settled_ttl_s:
                    index.update(key, state, now=now)  # changed since indexed: keep, in its new place
                    continue
                del table[key]
                index.forget(key)
                pruned += 1
        return pruned

    @app.timer(_METRICS_POLL_S)
    async def online_metrics() -> None:
        now = time.monotonic()
        if not metrics_due["dirty"] and now - metrics_due["last"] < settings.metrics_interval_s:
            return
        metrics_due.update(dirty=False, last=now)
        for event in await asyncio.to_thread(monitors.online_metrics):
            await send(metrics_topic, event.model_version, event)
        await maybe_request()
        await rollout()

    async def rollout() -> None:
        """Publish the policy's final decisions on challengers; each marked published after Kafka's ack."""
        for decision in await asyncio.to_thread(monitors.rollout):
            delivered = await send(decisions_topic, decision.challenger_version, decision)
            await delivered
            await asyncio.to_thread(monitors.mark_decision_published, decision)

    @app.timer(settings.drift_interval_s)
    async def drift() -> None:
        report = await asyncio.to_thread(monitors.drift_report)
        if report is None:
            return
        await send(drift_topic, report.model_version, report)
        if report.alert:
            await maybe_request()

    @app.page("/metrics")
    async def metrics_page(view: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        # The exposition format's content type carries a charset, which aiohttp only takes as a header.
        return view.bytes(monitors.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})
