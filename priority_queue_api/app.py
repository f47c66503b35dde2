"""Wiring of the worklist API: settings, Redis, Kafka producers, users, metrics, routers, error translation."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from cxr_triage import __version__
from cxr_triage.image_store import open_image_store
from cxr_triage.redis_client import open_async_redis
from cxr_triage.settings import Settings
from cxr_triage.sla import SlaPolicy
from cxr_triage.worklist.keys import WorklistKeys
from priority_queue_api.cache_trim import trim_periodically
from priority_queue_api.config import ApiPolicy
from priority_queue_api.errors import install_error_handlers
from priority_queue_api.events_out import Auditor, EventSink
from priority_queue_api.images import DerivedCache
from priority_queue_api.kafka_lag import KafkaLagReader
from priority_queue_api.metrics import ApiMetrics, MetricsMiddleware
from priority_queue_api.routes import health, me, page, studies, system, uploads, worklist
from priority_queue_api.routes.page import STATIC_DIR
from priority_queue_api.system_monitor import SystemMonitor
from priority_queue_api.uploads import UploadPublisher
from priority_queue_api.users import UserDirectory, users_file
from priority_queue_api.verdict_lookup import VerdictLookup

log = logging.getLogger(__name__)

# Audit records outlive a short Kafka outage in the producer's queue; verdicts wait ApiPolicy's timeout.
AUDIT_MESSAGE_TIMEOUT_S = 120.0


def create_app(
    settings: Settings, *, policy: ApiPolicy | None = None, sla: SlaPolicy | None = None
) -> FastAPI:
    policy = policy or ApiPolicy()
    sla = sla or SlaPolicy()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.redis = open_async_redis(
            settings, decode_responses=True, socket_timeout=2.0, socket_connect_timeout=2.0
        )
        app.state.redis_bytes = open_async_redis(
            settings, decode_responses=False, socket_timeout=2.0, socket_connect_timeout=2.0
        )
        app.state.image_store = open_image_store(settings)
        app.state.verdict_sink = EventSink(
            settings, client_id="cxr-api-verdicts", timeout_s=policy.verdict_timeout_s
        )
        app.state.verdict_lookup = VerdictLookup.from_settings(
            settings, timeout_s=policy.verdict_lookup_timeout_s
        )
        audit_sink = EventSink(settings, client_id="cxr-api-audit", timeout_s=AUDIT_MESSAGE_TIMEOUT_S)
        app.state.auditor = Auditor(audit_sink, on_undelivered=app.state.metrics.audit_undelivered.inc)
        app.state.uploads = UploadPublisher(
            settings, app.state.image_store, timeout_s=policy.upload_timeout_s
        )
        monitor = SystemMonitor(
            metrics=app.state.metrics,
            redis_client=app.state.redis,
            keys=app.state.wkeys,
            sla=sla,
            lag_reader=KafkaLagReader(settings),
            interval_s=policy.monitor_interval_s,
        )
        monitoring = asyncio.create_task(monitor.run(), name="system-monitor")
        trimming = asyncio.create_task(
            trim_periodically(
                app.state.render_cache,
                max_bytes=policy.render_cache_max_mb * 1024 * 1024,
                interval_s=policy.render_cache_trim_interval_s,
                metrics=app.state.metrics,
            ),
            name="render-cache-trim",
        )
        # ~100k long-lived objects (FastAPI, pydantic, clients) make a full collection take tens of ms: move
        # them out of the collector's way so a gen-2 pass during a request scans only request garbage.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            monitoring.cancel()
            trimming.cancel()
            await asyncio.to_thread(app.state.uploads.close, policy.shutdown_flush_s)
            await asyncio.to_thread(app.state.verdict_sink.close, policy.shutdown_flush_s)
            await asyncio.to_thread(audit_sink.close, policy.shutdown_flush_s)
            await app.state.redis.aclose()
            await app.state.redis_bytes.aclose()

    app = FastAPI(
        title="cxr-triage worklist API",
        version=__version__,
        lifespan=lifespan,
        description="Chest X-ray worklist for radiologists. Every endpoint except /healthz and /metrics needs "
        "`Authorization: Bearer <token>` (tokens: `cxr-triage users add NAME --role ROLE`).",
    )
    app.state.settings = settings
    app.state.policy = policy
    app.state.sla = sla
    app.state.wkeys = WorklistKeys(settings.redis_key_prefix)
    app.state.users = UserDirectory(users_file(settings.home))
    app.state.metrics = ApiMetrics()
    app.state.render_cache = DerivedCache(settings.home / "derived")
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    install_error_handlers(app)
    for module in (health, me, worklist, studies, uploads, page, system):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
