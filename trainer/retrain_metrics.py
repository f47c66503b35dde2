"""Prometheus metrics of the retrain worker (``/metrics`` on ``CXR_RETRAIN_METRICS_PORT``), in its own registry."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

logger = logging.getLogger(__name__)

OUTCOMES = ("promoted", "rejected", "failed", "duplicate", "invalid")


class RetrainMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "cxr_retrain_requests",
            "Training requests handled, by outcome (duplicate: answered before, skipped)",
            ["outcome"],
            registry=r,
        )
        for outcome in OUTCOMES:  # every series exists from the start, at 0
            self.requests.labels(outcome=outcome)
        self.last_duration = Gauge(
            "cxr_retrain_last_duration_seconds",
            "From a request's start to its result, for the last request trained on",
            registry=r,
        )
        self.last_finished = Gauge(
            "cxr_retrain_last_finished_timestamp_seconds", "When the last result was published", registry=r
        )
        self.busy = Gauge("cxr_retrain_busy", "1 while a request is being handled", registry=r)

    def serve(self, *, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
        logger.info("metrics endpoint listening", extra={"host": host, "port": port})
