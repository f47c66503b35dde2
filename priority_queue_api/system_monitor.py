"""Keeps the API's system gauges current: the worklist tier by tier (Redis) and consumer lag (Kafka)."""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio
from redis.exceptions import RedisError

from cxr_triage.sla import TIERS, SlaPolicy
from cxr_triage.worklist.keys import WorklistKeys
from cxr_triage.worklist.stats import tier_stats
from priority_queue_api.kafka_lag import KafkaLagReader, KafkaSnapshot
from priority_queue_api.metrics import ApiMetrics

logger = logging.getLogger(__name__)


class SystemMonitor:
    """Refreshes the gauges every ``interval_s``; a failed source keeps its last values and counts a failure."""

    def __init__(
        self,
        *,
        metrics: ApiMetrics,
        redis_client: redis.asyncio.Redis,
        keys: WorklistKeys,
        sla: SlaPolicy,
        lag_reader: KafkaLagReader,
        interval_s: float,
    ) -> None:
        self._metrics = metrics
        self._redis = redis_client
        self._keys = keys
        self._sla = sla
        self._lag = lag_reader
        self._interval_s = interval_s
        for tier in TIERS:
            metrics.sla.labels(tier.value).set(sla.max_wait_s(tier))

    async def run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._interval_s)

    async def refresh(self) -> None:
        await self._refresh_worklist()
        await self._refresh_kafka()

    async def _refresh_worklist(self) -> None:
        try:
            stats = await tier_stats(self._redis, keys=self._keys, policy=self._sla, now=time.time())
            claimed = int(await self._redis.zcard(self._keys.claims))
        except (RedisError, OSError) as exc:
            self._failed("redis", exc)
            return
        for entry in stats:
            self._metrics.unread.labels(entry.tier.value).set(entry.unread)
            self._metrics.oldest_wait.labels(entry.tier.value).set(entry.oldest_wait_s)
        self._metrics.claimed.set(claimed)
        self._metrics.monitor_refreshed.labels("redis").set_to_current_time()

    async def _refresh_kafka(self) -> None:
        try:
            snapshot: KafkaSnapshot = await asyncio.to_thread(self._lag.read)
        except Exception as exc:  # any admin failure (KafkaException, a timeout): keep the last values
            self._failed("kafka", exc)
            return
        # Groups come and go (a finished CLI consumer): only the current ones keep series.
        self._metrics.consumer_lag.clear()
        for lag in snapshot.lags:
            self._metrics.consumer_lag.labels(lag.group, lag.topic, str(lag.partition)).set(lag.lag)
        for topic, offset in snapshot.end_offsets.items():
            self._metrics.topic_end_offset.labels(topic).set(offset)
        self._metrics.monitor_refreshed.labels("kafka").set_to_current_time()

    def _failed(self, source: str, exc: BaseException) -> None:
        self._metrics.monitor_failures.labels(source).inc()
        logger.warning("system gauges not refreshed", extra={"source": source, "error": type(exc).__name__})
