"""Prometheus metrics of the rollout worker (``/metrics`` on ``CXR_ROLLOUT_METRICS_PORT``), in its own registry.

Labels are actions and reasons only: never a study, and no version (a version is a label of the processors'
gauges; here the log line and the MLflow tags name it).
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from trainer.rollout_worker import CARRIED_OUT, SKIPPED, Handled

logger = logging.getLogger(__name__)


class RolloutMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.carried_out = Counter(
            "cxr_rollout_decisions",
            "Policy decisions carried out, by outcome (promoted, rolled_back, failed: the switch did not come up)",
            ["outcome"],
            registry=r,
        )
        self.skipped = Counter(
            "cxr_rollout_skipped",
            "Decisions read and not acted on, by reason (duplicate, stale, operator, ignored, invalid)",
            ["reason"],
            registry=r,
        )
        for outcome in CARRIED_OUT:  # every series exists from the start, at 0
            self.carried_out.labels(outcome=outcome)
        for reason in SKIPPED:
            self.skipped.labels(reason=reason)
        self.retries = Counter(
            "cxr_rollout_retries",
            "Decisions to be read again: MLflow or Kafka failed while carrying one out",
            registry=r,
        )
        self.last_carried_out = Gauge(
            "cxr_rollout_last_carried_out_timestamp_seconds",
            "When the last decision was carried out",
            registry=r,
        )

    def count(self, handled: Handled, *, now: float) -> None:
        if handled.outcome in CARRIED_OUT:
            self.carried_out.labels(outcome=handled.outcome).inc()
            self.last_carried_out.set(now)
        else:
            self.skipped.labels(reason=handled.outcome).inc()

    def serve(self, *, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
        logger.info("metrics endpoint listening", extra={"host": host, "port": port})
