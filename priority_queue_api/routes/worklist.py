from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from priority_queue_api.deps import KeysDep, RedisDep
from priority_queue_api.models import ErrorPublic, WorklistPublic
from priority_queue_api.service import fetch_worklist

router = APIRouter(tags=["worklist"])


@router.get("/worklist", response_model=WorklistPublic, responses={503: {"model": ErrorPublic}})
async def get_worklist(
    redis: RedisDep,
    keys: KeysDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> WorklistPublic:
    """Studies by priority, highest first, each with its 14 probabilities and the model that scored it."""
    return await fetch_worklist(redis=redis, keys=keys, limit=limit, offset=offset)
