"""Prometheus metrics of the API, in a registry of its own (no global state shared across apps)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cxr_api_requests_total", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "cxr_api_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.audit_undelivered = Counter(
            "cxr_api_audit_undelivered_total", "Audit events Kafka did not accept", registry=self.registry
        )
        # The system's state, refreshed by SystemMonitor in the background: a scrape never waits on Redis or
        # Kafka. Labels are tiers, groups, topics and partitions, never a study.
        r = self.registry
        self.unread = Gauge("cxr_worklist_unread", "Unread studies on the worklist", ["tier"], registry=r)
        self.oldest_wait = Gauge(
            "cxr_worklist_oldest_unread_seconds",
            "How long the oldest unread study of the tier has waited since it was received (0: none)",
            ["tier"],
            registry=r,
        )
        self.sla = Gauge(
            "cxr_worklist_sla_seconds",
            "The tier's SLA: longest wait promised before a read",
            ["tier"],
            registry=r,
        )
        self.claimed = Gauge("cxr_worklist_claimed", "Studies claimed by a reader right now", registry=r)
        self.consumer_lag = Gauge(
            "cxr_kafka_consumer_lag",
            "Messages after the consumer group's committed offset",
            ["group", "topic", "partition"],
            registry=r,
        )
        self.topic_end_offset = Gauge(
            "cxr_kafka_topic_end_offset",
            "Messages ever written to the topic (sum of its partitions' end offsets)",
            ["topic"],
            registry=r,
        )
        self.monitor_failures = Counter(
            "cxr_api_monitor_failures", "Refreshes of the system gauges that failed", ["source"], registry=r
        )
        self.monitor_refreshed = Gauge(
            "cxr_api_monitor_last_success_timestamp_seconds",
            "When the system gauges last refreshed from the source",
            ["source"],
            registry=r,
        )
        for source in ("redis", "kafka"):
            self.monitor_failures.labels(source)
        self.render_cache_bytes = Gauge(
            "cxr_api_render_cache_bytes", "Bytes of rendered PNGs kept under <home>/derived", registry=r
        )
        self.render_cache_evicted = Counter(
            "cxr_api_render_cache_evicted",
            "Rendered PNGs deleted to keep the cache under its cap",
            registry=r,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.latency.labels(method, route).observe(seconds)
        self.requests.labels(method, route, str(status)).inc()


class MetricsMiddleware:
    """Pure ASGI middleware (BaseHTTPMiddleware costs a task group per request on the hot path)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            # The route template, not the raw path: study ids must not become label values.
            route: Any = scope.get("route")
            self.metrics.observe(
                scope["method"], getattr(route, "path", "unmatched"), status, time.perf_counter() - start
            )
