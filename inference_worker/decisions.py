"""Operator decisions on a challenger (``cxr-triage model shadow|canary|rollout stop``) as Kafka events.

Each command first changes the model repository (that is what Triton serves), then publishes a
``ModelDecisionEventV1`` (``decided_by="operator"``) to ``cxr.model-decisions.v1``, keyed by the challenger
version, so that the decision log holds operators' decisions beside the policy's. If Kafka cannot take it the
command fails saying so; running it again changes nothing in the repository and publishes the event.
"""

from __future__ import annotations

import uuid
from typing import Protocol

from confluent_kafka import KafkaError, Message, Producer

from cxr_triage import topics
from cxr_triage.events import DecisionAction, ModelDecisionEventV1
from cxr_triage.kafka_config import producer_config
from cxr_triage.model.rollout import RolloutState
from cxr_triage.settings import Settings


class DecisionNotPublished(RuntimeError):
    """Kafka did not acknowledge the decision event."""


class DecisionSink(Protocol):
    def __call__(self, event: ModelDecisionEventV1) -> None: ...


def operator_decision(state: RolloutState, action: DecisionAction, *, reason: str) -> ModelDecisionEventV1:
    return ModelDecisionEventV1(
        decision_id=uuid.uuid4().hex,
        action=action,
        mode=state.mode,
        champion_version=state.champion_version,
        challenger_version=state.challenger_version,
        fraction=state.fraction,
        reason=reason,
        decided_by="operator",
    )


def kafka_sink(settings: Settings, *, timeout_s: float = 15.0) -> DecisionSink:
    """Publishes one event and waits for the brokers' acknowledgement."""

    def publish(event: ModelDecisionEventV1) -> None:
        producer = Producer(producer_config(settings, client_id="cxr-model-decisions"))
        errors: list[KafkaError] = []

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                errors.append(err)

        producer.produce(
            topics.MODEL_DECISIONS,
            key=event.challenger_version,
            value=event.to_bytes(),
            on_delivery=on_delivery,
        )
        if producer.flush(timeout_s) or errors:
            detail = errors[0].str() if errors else f"not acknowledged in {timeout_s:g}s"
            raise DecisionNotPublished(f"{topics.MODEL_DECISIONS}: {detail}")

    return publish
