"""Wiring of the worklist API: settings, Redis, metrics, routers, error translation."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from redis.asyncio import Redis
from redis.exceptions import RedisError

from cxr_triage import __version__
from cxr_triage.settings import Settings
from priority_queue_api.metrics import ApiMetrics
from priority_queue_api.routes import health, studies, worklist
from priority_queue_api.service import StudyNotFound

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.redis = Redis.from_url(
            settings.redis_url, decode_responses=True, socket_timeout=2.0, socket_connect_timeout=2.0
        )
        try:
            yield
        finally:
            await app.state.redis.aclose()

    app = FastAPI(title="cxr-triage worklist API", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = ApiMetrics()
    app.middleware("http")(app.state.metrics.middleware)

    @app.exception_handler(StudyNotFound)
    async def _not_found(request: Request, exc: StudyNotFound) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(RedisError)
    async def _redis_down(request: Request, exc: RedisError) -> JSONResponse:
        log.error("worklist store unavailable", extra={"error": type(exc).__name__})
        return JSONResponse(
            status_code=503, content={"detail": "worklist store (Redis) is unavailable; retry"}
        )

    for module in (health, worklist, studies):
        app.include_router(module.router)
    return app
