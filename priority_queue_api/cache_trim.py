"""Keeps the rendering cache under its cap: the least recently viewed renderings go first."""

from __future__ import annotations

import asyncio
import logging

from priority_queue_api.images import DerivedCache
from priority_queue_api.metrics import ApiMetrics

logger = logging.getLogger(__name__)


async def trim_periodically(
    cache: DerivedCache, *, max_bytes: int, interval_s: float, metrics: ApiMetrics
) -> None:
    while True:
        await trim_once(cache, max_bytes=max_bytes, metrics=metrics)
        await asyncio.sleep(interval_s)


async def trim_once(cache: DerivedCache, *, max_bytes: int, metrics: ApiMetrics) -> None:
    try:
        trimmed = await asyncio.to_thread(cache.trim, max_bytes)
    except OSError as exc:  # the cache's disk is unreadable: renderings are still served, uncached or not
        logger.warning("rendering cache not trimmed", extra={"error": type(exc).__name__})
        return
    metrics.render_cache_bytes.set(trimmed.kept_bytes)
    metrics.render_cache_evicted.inc(trimmed.removed_files)
    if trimmed.removed_files:
        logger.info(
            "rendering cache trimmed",
            extra={"removed_files": trimmed.removed_files, "kept_files": trimmed.kept_files,
                   "kept_bytes": trimmed.kept_bytes},
        )  # fmt: skip
