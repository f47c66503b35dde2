from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from cxr_triage.events import STUDY_ID_PATTERN
from priority_queue_api.deps import KeysDep, RedisDep
from priority_queue_api.models import ErrorPublic, StudyPublic
from priority_queue_api.service import fetch_study

router = APIRouter(tags=["studies"])


@router.get(
    "/studies/{study_id}",
    response_model=StudyPublic,
    responses={404: {"model": ErrorPublic}, 503: {"model": ErrorPublic}},
)
async def get_study(
    redis: RedisDep, keys: KeysDep, study_id: Annotated[str, Path(pattern=STUDY_ID_PATTERN)]
) -> StudyPublic:
    """One scored study."""
    return await fetch_study(redis=redis, keys=keys, study_id=study_id)
