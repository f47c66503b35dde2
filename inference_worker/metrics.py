"""Prometheus metrics of one worker, in a registry of its own (tests and several workers never collide)."""

from __future__ import annotations

import logging
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, Info, start_http_server

from cxr_triage.sla import TIERS

logger = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_PRIORITY_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))
STAGES = ("idle", "scoring", "writing", "publishing", "committing")


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.scored = Counter(
            "cxr_worker_studies_scored", "Studies scored and written to the worklist", registry=r
        )
        self.replayed = Counter(
            "cxr_worker_studies_unchanged",
            "Studies already scored by the same model version (replays); the worklist was left as it was",
            registry=r,
        )
        self.dead_lettered = Counter(
            "cxr_worker_studies_dead_lettered",
            "Messages sent to the dead letter topic",
            ["reason"],
            registry=r,
        )
        self.batch_failures = Counter(
            "cxr_worker_batch_failures",
            "Batches left uncommitted to be retried, by failing stage",
            ["stage"],
            registry=r,
        )
        self.batch_size = Histogram(
            "cxr_worker_batch_size", "Messages per consumed micro-batch", buckets=_BATCH_BUCKETS, registry=r
        )
        self.triton_latency = Histogram(
            "cxr_worker_triton_latency_seconds",
            "Triton inference call per batch",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end_latency = Histogram(
            "cxr_worker_end_to_end_latency_seconds",
            "From the study's received_at to its worklist write",
            buckets=_E2E_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "cxr_worker_in_flight",
            "Messages taken from Kafka and not yet committed (at most one micro-batch)",
            registry=r,
        )
        # Where the batch in hand is: an operator sees a worker stuck on one service; a fault test freezes a
        # service and kills the worker exactly while its batch waits there.
        self.stage = Enum(
            "cxr_worker_stage",
            "What the worker is doing with its micro-batch",
            states=list(STAGES),
            registry=r,
        )
        self.paused = Gauge(
            "cxr_worker_paused",
            "1 while the consumer is paused, waiting to retry a batch that a service failed",
            registry=r,
        )
        self.assigned_partitions = Gauge(
            "cxr_worker_assigned_partitions",
            "Partitions of the studies topic this worker holds now (0 while it waits for a rebalance)",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "cxr_worker_consumer_lag",
            "Messages in an assigned partition after this worker's position (refreshed periodically)",
            ["topic", "partition"],
            registry=r,
        )
        self.cams_stored = Counter(
            "cxr_worker_cams_stored", "Studies whose class activation maps were stored", registry=r
        )
        self.model = Info("cxr_worker_model", "Model that scored the latest batch", registry=r)
        # An untrained model (the initial export) or an uncalibrated external one states no thresholds: its
        # priorities order nothing clinically, which an operator must see (alert CxrUntrainedModelServed).
        self.model_calibrated = Gauge(
            "cxr_worker_model_calibrated",
            "1 when the model that scored the latest batch carries thresholds chosen at training, else 0",
            registry=r,
        )
        self.priority = Histogram(
            "cxr_worker_priority",
            "Worklist priority of each newly scored study, by the model version that scored it",
            ["model_version"],
            buckets=_PRIORITY_BUCKETS,
            registry=r,
        )
        self.tiers = Counter(
            "cxr_worker_studies_by_tier", "Newly scored studies, by the SLA tier filed", ["tier"], registry=r
        )
        for tier in TIERS:  # every series exists from the start, at 0
            self.tiers.labels(tier.value)
        # Online evaluation (docs/serving.md): what a challenger adds, kept apart from the champion's numbers.
        self.challenger_latency = Histogram(
            "cxr_worker_challenger_latency_seconds",
            "Triton inference call per batch on the challenger model (shadow or canary), beside the champion's",
            ["mode"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.challenger_failures = Counter(
            "cxr_worker_challenger_failures",
            "Batches the challenger could not score; their studies were ordered by the champion alone",
            ["mode"],
            registry=r,
        )
        self.rollout_predictions = Counter(
            "cxr_worker_rollout_predictions",
            "Predictions written during a rollout, by role (serving / shadow) and arm (champion / canary)",
            ["role", "arm"],
            registry=r,
        )
        self.rollout = Info(
            "cxr_worker_rollout",
            "Rollout in force at the latest batch (mode none: champion only)",
            registry=r,
        )

    def serve(self, *, host: str, port: int) -> MetricsServer:
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        logger.info("metrics endpoint listening", extra={"host": host, "port": port})
        return MetricsServer(server, thread)


class MetricsServer:
    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
