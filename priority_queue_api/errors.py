"""Errors the API raises, and their single translation to JSON responses (``{"detail": message}``)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from priority_queue_api.models import ErrorPublic

log = logging.getLogger(__name__)


class ApiError(Exception):
    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ApiError):
    status_code = 400


class StudyNotFound(ApiError, LookupError):
    status_code = 404

    def __init__(self, study_id: str) -> None:
        super().__init__(f"study {study_id!r} is not known (never scored, or its record was removed)")
        self.study_id = study_id


class NotFound(ApiError):
    status_code = 404


class Conflict(ApiError):
    status_code = 409


class PayloadTooLarge(ApiError):
    status_code = 413


class Unprocessable(ApiError):
    status_code = 422


class MonitoringUnavailable(ApiError):
    """Prometheus did not answer: the system view has nothing to show."""

    status_code = 503


class EventsUnavailable(ApiError):
    """Kafka did not acknowledge an event the request depends on; nothing was changed."""

    status_code = 503


# What every route may answer besides its success, for the OpenAPI document.
def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorPublic} for code in (*codes, 422, 503)}


def _summary(errors: list[Any]) -> str:
    parts = []
    for error in errors[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "request"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "invalid request: " + "; ".join(parts) + more


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content={"detail": exc.message})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        return JSONResponse(
            status_code=422, content={"detail": _summary(errors), "errors": jsonable_encoder(errors)}
        )

    @app.exception_handler(RedisError)
    async def _redis_down(request: Request, exc: RedisError) -> JSONResponse:
        log.error("worklist store unavailable", extra={"error": type(exc).__name__})
        return JSONResponse(
            status_code=503, content={"detail": "worklist store (Redis) is unavailable; retry"}
        )
