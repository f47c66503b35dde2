"""Prometheus metrics of ``produce --watch`` (served on CXR_PRODUCER_METRICS_PORT when it is set)."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, start_http_server

logger = logging.getLogger(__name__)

FILE_OUTCOMES = ("stored", "rejected")


class ProducerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.files = Counter(
            "cxr_producer_files", "Files taken from the folder, by outcome", ["outcome"], registry=r
        )
        for outcome in FILE_OUTCOMES:  # every series exists from the start, at 0
            self.files.labels(outcome)
        self.rejected = Counter(
            "cxr_producer_rejected", "Files refused (dead-lettered), by kind of reason", ["kind"], registry=r
        )
        self.studies_published = Counter(
            "cxr_producer_studies_published", "Study events published from the folder", registry=r
        )

    def serve(self, *, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
        logger.info("metrics endpoint listening", extra={"host": host, "port": port})
