"""The rollout worker's Kafka side: decisions in, committed only once carried out (at-least-once).

Decisions are read in the worker's own consumer group from the beginning of ``cxr.model-decisions.v1`` (kept
forever): a decision published before the worker first ran is still carried out, and an old one is judged
stale or duplicate by ``DecisionExecutor``. If MLflow or the repository fails midway, the record is read again
after a pause; the ledger resumes it where it stopped.
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from mlflow.exceptions import MlflowException

from cxr_triage import topics
from cxr_triage.kafka_config import consumer_config
from trainer.errors import TrainerError
from trainer.rollout_metrics import RolloutMetrics
from trainer.rollout_worker import DecisionExecutor, Handled
from trainer.settings import TrainerSettings

logger = logging.getLogger(__name__)

# What can pass (a restarted MLflow, a full disk freed, a broker back): read the decision again later.
RETRIED = (TrainerError, MlflowException, OSError, KafkaException)


class DecisionConsumer:
    def __init__(
        self, settings: TrainerSettings, executor: DecisionExecutor, metrics: RolloutMetrics
    ) -> None:
        self._consumer = Consumer(
            consumer_config(settings, group_id=settings.rollout_group, client_id="cxr-rollout-worker")
        )
        self._consumer.subscribe([topics.MODEL_DECISIONS])
        self._executor = executor
        self._metrics = metrics
        self._retry_s = settings.rollout_retry_s

    def _rewind(self, message: Message) -> None:
        tp = TopicPartition(str(message.topic()), message.partition() or 0, message.offset() or 0)
        try:
            self._consumer.seek(tp)
        except KafkaException as exc:  # revoked meanwhile: its new owner reads from the last commit
            logger.info("could not seek back", extra={"error": str(exc)})

    def next(self, *, timeout_s: float) -> Handled | None:
        """Handle the next decision if one arrives within ``timeout_s``; None otherwise (or to be retried)."""
        message = self._consumer.poll(timeout_s)
        if message is None:
            return None
        error = message.error()
        if error is not None:
            if error.fatal():
                raise KafkaException(error)
            return None
        try:
            handled = self._executor.process(message.value())
        except RETRIED as exc:
            logger.warning(
                "decision not carried out yet; it will be read again",
                extra={"error": f"{type(exc).__name__}: {exc}", "retry_s": self._retry_s},
            )
            self._metrics.retries.inc()
            self._rewind(message)
            time.sleep(self._retry_s)
            return None
        self._metrics.count(handled, now=time.time())
        try:
            self._consumer.commit(message=message, asynchronous=False)
        except KafkaException as exc:
            # Carried out and in the ledger: a redelivery is a duplicate, skipped.
            logger.warning("commit failed; a redelivery will be skipped", extra={"error": str(exc)})
        return handled

    def close(self) -> None:
        self._consumer.close()
