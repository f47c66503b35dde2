from __future__ import annotations

from fastapi import APIRouter, Request

from priority_queue_api.deps import AuditorDep, PolicyDep, Producer, UploadsDep
from priority_queue_api.errors import error_responses
from priority_queue_api.models import UploadPublic
from priority_queue_api.uploads import upload_study

router = APIRouter(tags=["studies"])

_BINARY = {"schema": {"type": "string", "format": "binary"}}


@router.post(
    "/studies",
    status_code=202,
    response_model=UploadPublic,
    responses=error_responses(401, 403, 413),
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "The image file itself (PNG, JPEG or DICOM) as the request body",
            "content": {
                "application/octet-stream": _BINARY,
                "image/png": _BINARY,
                "image/jpeg": _BINARY,
                "application/dicom": _BINARY,
            },
        }
    },
)
async def post_study(
    user: Producer, request: Request, policy: PolicyDep, uploads: UploadsDep, auditor: AuditorDep
) -> UploadPublic:
    """Upload a radiograph: validated, stored and published to ``cxr.studies.v1`` like ``cxr-triage produce``;
    it appears on the worklist once a worker has scored it."""
    with auditor.recording(user, "upload", "study"):
        event = await upload_study(request=request, policy=policy, uploads=uploads, source=f"api/{user.name}")
    return UploadPublic(
        study_id=event.study_id,
        sha256=event.sha256,
        content_type=event.content_type,
        size_bytes=event.size_bytes,
        received_at=event.received_at,
    )
