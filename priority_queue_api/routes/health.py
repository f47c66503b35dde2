from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from priority_queue_api.deps import RedisDep
from priority_queue_api.models import HealthPublic

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=HealthPublic)
async def healthz(redis: RedisDep, response: Response) -> HealthPublic:
    """Liveness and Redis reachability; 503 when the worklist store is down."""
    try:
        await redis.ping()
    except (RedisError, OSError):
        response.status_code = 503
        return HealthPublic(status="degraded", redis="unreachable")
    return HealthPublic(status="ok", redis="ok")


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
