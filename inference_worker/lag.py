"""Consumer lag per assigned partition, for ``/metrics``: the log end offset minus the worker's position.

Refreshed every few seconds from what librdkafka already knows (the high watermark of the last fetch and the
consumer's position), so it costs no broker round trip in the steady state; only a partition whose watermark
or position is not known yet is asked for it, with a short timeout.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from confluent_kafka import KafkaException, TopicPartition
from prometheus_client import Gauge

logger = logging.getLogger(__name__)

_QUERY_TIMEOUT_S = 1.0


class LagSource(Protocol):
    def assignment(self) -> list[TopicPartition]: ...
    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]: ...
    def committed(self, partitions: list[TopicPartition], timeout: float = ...) -> list[TopicPartition]: ...
    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = ..., cached: bool = ...
    ) -> tuple[int, int] | None: ...


class LagTracker:
    def __init__(self, gauge: Gauge, *, every_s: float) -> None:
        self._gauge = gauge
        self._every_s = every_s
        self._last = -every_s
        self._labelled: set[tuple[str, str]] = set()

    def maybe_refresh(self, consumer: LagSource) -> None:
        now = time.monotonic()
        if now - self._last >= self._every_s:
            self._last = now
            self.refresh(consumer)

    def refresh(self, consumer: LagSource) -> None:
        try:
            positions = consumer.position(consumer.assignment())
            lags = {(tp.topic, str(tp.partition)): self._lag(consumer, tp) for tp in positions}
        except (KafkaException, RuntimeError) as exc:  # RuntimeError: the consumer is closed
            logger.debug("consumer lag not refreshed", extra={"error": str(exc)})
            return
        for labels in self._labelled - set(lags):  # revoked: its owner reports it now
            self._gauge.remove(*labels)
        for labels, lag in lags.items():
            if lag is not None:
                self._gauge.labels(*labels).set(lag)
        self._labelled = {labels for labels, lag in lags.items() if lag is not None}

    def _lag(self, consumer: LagSource, tp: TopicPartition) -> int | None:
        watermarks = consumer.get_watermark_offsets(tp, cached=True)
        if not watermarks or watermarks[1] < 0:
            watermarks = consumer.get_watermark_offsets(tp, timeout=_QUERY_TIMEOUT_S, cached=False)
        if not watermarks or watermarks[1] < 0:
            return None
        low, high = watermarks
        offset = tp.offset
        if offset < 0:  # nothing consumed since the assignment: it starts from the committed offset
            (committed,) = consumer.committed(
                [TopicPartition(tp.topic, tp.partition)], timeout=_QUERY_TIMEOUT_S
            )
            offset = committed.offset if committed.offset >= 0 else low
        return max(high - offset, 0)
