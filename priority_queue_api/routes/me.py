from __future__ import annotations

from fastapi import APIRouter

from priority_queue_api.deps import CurrentUser
from priority_queue_api.errors import error_responses
from priority_queue_api.models import MePublic

router = APIRouter(tags=["users"])


@router.get("/me", response_model=MePublic, responses=error_responses(401))
async def whoami(user: CurrentUser) -> MePublic:
    """The user the bearer token belongs to (the web page signs in with this)."""
    return MePublic(name=user.name, role=user.role.value)
