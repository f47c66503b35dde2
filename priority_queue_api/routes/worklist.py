from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Query, Response

from cxr_triage.labels import LABELS
from cxr_triage.sla import TIERS, Tier
from priority_queue_api.deps import (
    AuditorDep,
    PolicyDep,
    Radiologist,
    RedisDep,
    SlaDep,
    Viewer,
    WorklistKeysDep,
)
from priority_queue_api.errors import Unprocessable, error_responses
from priority_queue_api.models import ClaimCreate, StudyDetail, WorklistPublic
from priority_queue_api.service import claim, fetch_worklist

router = APIRouter(tags=["worklist"])


@router.get("/worklist", response_model=WorklistPublic, responses=error_responses(401, 403))
async def get_worklist(
    user: Viewer,
    redis: RedisDep,
    keys: WorklistKeysDep,
    sla: SlaDep,
    auditor: AuditorDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
    status: Annotated[
        Literal["unclaimed", "claimed"] | None, Query(description="Only waiting, or only leased, studies")
    ] = None,
    tier: Annotated[list[Tier] | None, Query(description="Only these SLA tiers (repeatable)")] = None,
    min_priority: Annotated[
        float, Query(ge=0.0, le=1.0, description="Only model priority at or above")
    ] = 0.0,
    finding: Annotated[
        str | None,
        Query(
            description="Only studies whose model probability of this finding is at least min_probability",
            json_schema_extra={"enum": list(LABELS)},
        ),
    ] = None,
    min_probability: Annotated[
        float, Query(ge=0.0, le=1.0, description="The threshold of the finding filter")
    ] = 0.5,
) -> Response:
    """Unread studies by effective priority (model priority aged by waiting time against the SLA tier),
    each with time waited, time left, lease state and its 14 probabilities."""
    tiers = tuple(t for t in TIERS if t in tier) if tier else TIERS
    if finding is not None and finding not in LABELS:
        raise Unprocessable(f"finding must be one of the 14 labels, not {finding!r}")
    with auditor.recording(user, "view", "worklist"):
        page = await fetch_worklist(
            redis=redis,
            keys=keys,
            sla=sla,
            limit=limit,
            offset=offset,
            tiers=tiers,
            status=status,
            min_priority=min_priority,
            finding=finding,
            min_probability=min_probability,
        )
    # Already validated: serialise once instead of letting FastAPI validate the page a second time.
    return Response(page.model_dump_json(), media_type="application/json")


@router.post(
    "/worklist/claim",
    response_model=StudyDetail,
    responses={204: {"description": "No study is waiting"}, **error_responses(400, 401, 403)},
)
async def claim_next_study(
    user: Radiologist,
    redis: RedisDep,
    keys: WorklistKeysDep,
    sla: SlaDep,
    policy: PolicyDep,
    auditor: AuditorDep,
    body: Annotated[ClaimCreate | None, Body()] = None,
) -> StudyDetail | Response:
    """Lease the waiting study of highest effective priority to the caller (atomically: two radiologists
    never get the same study). The lease expires after ``lease_s`` (capped at the server's maximum) and the
    study goes back to the list."""
    lease_s = min(body.lease_s, policy.max_lease_s) if body and body.lease_s else policy.lease_s
    with auditor.recording(user, "claim", "worklist") as audited:
        study = await claim(redis=redis, keys=keys, sla=sla, radiologist=user.name, lease_s=lease_s)
        audited.study_id = study.study_id if study else None
    if study is None:
        return Response(status_code=204)
    return study
