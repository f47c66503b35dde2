from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Response

from cxr_triage.events import STUDY_ID_PATTERN
from cxr_triage.labels import LABELS
from cxr_triage.worklist.claims import release
from priority_queue_api import idempotency
from priority_queue_api.deps import (
    AuditorDep,
    PolicyDep,
    Radiologist,
    RedisBytesDep,
    RedisDep,
    Releaser,
    RenderCacheDep,
    SlaDep,
    StoreDep,
    VerdictLookupDep,
    VerdictSinkDep,
    Viewer,
    WorklistKeysDep,
)
from priority_queue_api.errors import Conflict, StudyNotFound, Unprocessable, error_responses
from priority_queue_api.images import DerivedCache, Rendered, cam_png, heatmap_png, image_png
from priority_queue_api.models import PatientDetails, StudyDetail, VerdictCreate, VerdictPublic
from priority_queue_api.patient import patient_details
from priority_queue_api.service import fetch_study
from priority_queue_api.users import Role
from priority_queue_api.verdicts import record_verdict

router = APIRouter(tags=["studies"])

StudyId = Annotated[
    str,
    Path(
        pattern=STUDY_ID_PATTERN,
        description="Study id (the pseudonymised StudyInstanceUID of a DICOM study, or a content sha256)",
    ),
]
MaxSide = Annotated[
    int | None, Query(ge=64, le=4096, description="Longest side of the PNG (default: the server's)")
]
_PNG = {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}, "description": "PNG"}
_CACHED_PNG = _PNG | {
    "headers": {
        "X-Render-Cache": {
            "description": "hit: read from the server's rendering cache; miss: decoded and rendered now",
            "schema": {"type": "string", "enum": ["hit", "miss"]},
        }
    }
}
# Patient images must not linger in shared caches.
_NO_STORE = {"Cache-Control": "private, no-store"}


def _png_response(rendered: Rendered) -> Response:
    return Response(
        rendered.png, media_type="image/png", headers=_NO_STORE | {"X-Render-Cache": rendered.cache}
    )


@router.get("/studies/{study_id}", response_model=StudyDetail, responses=error_responses(401, 403, 404))
async def get_study(
    user: Viewer, redis: RedisDep, keys: WorklistKeysDep, sla: SlaDep, auditor: AuditorDep, study_id: StudyId
) -> StudyDetail:
    """One study: probabilities, top findings, model version, timings, SLA and lease state, verdicts."""
    with auditor.recording(user, "view", "study", study_id):
        return await fetch_study(redis=redis, keys=keys, sla=sla, study_id=study_id)


Finding = Annotated[
    str, Query(description="One of the 14 findings", json_schema_extra={"enum": list(LABELS)})
]
ImageId = Annotated[
    str,
    Path(
        pattern=STUDY_ID_PATTERN, description="Image id (a pseudonymised SOPInstanceUID, or a content sha256)"
    ),
]


@dataclass(frozen=True)
class Rendering:
    """What every image route needs: who asks (audited), where the study's pixels and maps are, and the
    server's rendering cache."""

    user: Viewer
    redis: RedisDep
    redis_bytes: RedisBytesDep
    keys: WorklistKeysDep
    store: StoreDep
    policy: PolicyDep
    auditor: AuditorDep
    cache: DerivedCache

    async def image(self, study_id: str, image_id: str | None, max_side: int | None) -> Response:
        """``max_side`` None: the full stored resolution."""
        with self.auditor.recording(self.user, "view", "image", study_id):
            rendered = await image_png(
                redis=self.redis,
                keys=self.keys,
                store=self.store,
                cache=self.cache,
                study_id=study_id,
                image_id=image_id,
                max_side=max_side,
            )
        return _png_response(rendered)

    async def cam_layer(self, study_id: str, image_id: str | None, finding: str) -> Response:
        with self.auditor.recording(self.user, "view", "heatmap", study_id):
            _check_finding(finding)
            rendered = await cam_png(
                redis=self.redis,
                redis_bytes=self.redis_bytes,
                keys=self.keys,
                store=self.store,
                cache=self.cache,
                study_id=study_id,
                image_id=image_id,
                finding=finding,
            )
        return _png_response(rendered)

    async def heatmap(
        self, study_id: str, image_id: str | None, finding: str, max_side: int | None
    ) -> Response:
        with self.auditor.recording(self.user, "view", "heatmap", study_id):
            _check_finding(finding)
            png = await heatmap_png(
                redis=self.redis,
                redis_bytes=self.redis_bytes,
                keys=self.keys,
                store=self.store,
                study_id=study_id,
                image_id=image_id,
                finding=finding,
                max_side=max_side or self.policy.image_max_side,
            )
        return Response(png, media_type="image/png", headers=_NO_STORE)


def _check_finding(finding: str) -> None:
    if finding not in LABELS:
        raise Unprocessable(f"finding must be one of the 14 labels, not {finding!r}")


async def rendering(
    user: Viewer,
    redis: RedisDep,
    redis_bytes: RedisBytesDep,
    keys: WorklistKeysDep,
    store: StoreDep,
    policy: PolicyDep,
    auditor: AuditorDep,
    cache: RenderCacheDep,
) -> Rendering:
    return Rendering(user, redis, redis_bytes, keys, store, policy, auditor, cache)


RenderingDep = Annotated[Rendering, Depends(rendering)]


@router.get(
    "/studies/{study_id}/image",
    response_class=Response,
    responses={200: _CACHED_PNG, **error_responses(401, 403, 404)},
)
async def get_image(rendering: RenderingDep, study_id: StudyId, max_side: MaxSide = None) -> Response:
    """The study's radiograph (its most urgent image) as a greyscale PNG."""
    return await rendering.image(study_id, None, max_side or rendering.policy.image_max_side)


@router.get(
    "/studies/{study_id}/full",
    response_class=Response,
    responses={200: _CACHED_PNG, **error_responses(401, 403, 404)},
)
async def get_full_image(rendering: RenderingDep, study_id: StudyId) -> Response:
    """The study's radiograph at its full stored resolution, as a greyscale PNG (rendered once, then cached
    on the server; never upscaled)."""
    return await rendering.image(study_id, None, None)


@router.get(
    "/studies/{study_id}/cam",
    response_class=Response,
    responses={200: _CACHED_PNG, **error_responses(401, 403, 404)},
)
async def get_cam(rendering: RenderingDep, study_id: StudyId, finding: Finding) -> Response:
    """The model's class-activation map for ``finding`` alone: an RGBA PNG at the full size of the study's
    image (colour = strength, alpha = strength), for the page to lay over the image at an opacity of its own."""
    return await rendering.cam_layer(study_id, None, finding)


@router.get(
    "/studies/{study_id}/heatmap",
    response_class=Response,
    responses={200: _PNG, **error_responses(401, 403, 404)},
)
async def get_heatmap(
    rendering: RenderingDep, study_id: StudyId, finding: Finding, max_side: MaxSide = None
) -> Response:
    """The radiograph with the model's class-activation map for ``finding`` blended over it (PNG)."""
    return await rendering.heatmap(study_id, None, finding, max_side)


@router.get(
    "/studies/{study_id}/images/{image_id}/image",
    response_class=Response,
    responses={200: _CACHED_PNG, **error_responses(401, 403, 404)},
)
async def get_study_image(
    rendering: RenderingDep, study_id: StudyId, image_id: ImageId, max_side: MaxSide = None
) -> Response:
    """One image of the study (``images[]`` of ``GET /studies/{id}``) as a greyscale PNG."""
    return await rendering.image(study_id, image_id, max_side or rendering.policy.image_max_side)


@router.get(
    "/studies/{study_id}/images/{image_id}/full",
    response_class=Response,
    responses={200: _CACHED_PNG, **error_responses(401, 403, 404)},
)
async def get_study_image_full(rendering: RenderingDep, study_id: StudyId, image_id: ImageId) -> Response:
    """One image of the study at its full stored resolution, as a greyscale PNG (cached on the server)."""
    return await rendering.image(study_id, image_id, None)


@router.get(
    "/studies/{study_id}/images/{image_id}/cam",
    response_class=Response,
    responses={200: _CACHED_PNG, **error_responses(401, 403, 404)},
)
async def get_study_image_cam(
    rendering: RenderingDep, study_id: StudyId, image_id: ImageId, finding: Finding
) -> Response:
    """One image's own class-activation map for ``finding`` alone, as an RGBA layer at the image's full size."""
    return await rendering.cam_layer(study_id, image_id, finding)


@router.get(
    "/studies/{study_id}/images/{image_id}/heatmap",
    response_class=Response,
    responses={200: _PNG, **error_responses(401, 403, 404)},
)
async def get_study_image_heatmap(
    rendering: RenderingDep, study_id: StudyId, image_id: ImageId, finding: Finding, max_side: MaxSide = None
) -> Response:
    """One image of the study with its own class-activation map for ``finding`` blended over it (PNG)."""
    return await rendering.heatmap(study_id, image_id, finding, max_side)


@router.get(
    "/studies/{study_id}/patient", response_model=PatientDetails, responses=error_responses(401, 403, 404)
)
async def get_patient(
    user: Radiologist,
    redis: RedisDep,
    keys: WorklistKeysDep,
    store: StoreDep,
    auditor: AuditorDep,
    study_id: StudyId,
    response: Response,
) -> PatientDetails:
    """Who the patient is, from the original DICOM instance: radiologists only, and every read is audited.

    Everything else in the system knows the study by pseudonyms only; PNG and JPEG studies name no patient
    (404)."""
    with auditor.recording(user, "view", "patient", study_id):
        details = await patient_details(redis=redis, keys=keys, store=store, study_id=study_id)
    response.headers.update(_NO_STORE)
    return details


@router.post(
    "/studies/{study_id}/release", response_model=StudyDetail, responses=error_responses(401, 403, 404, 409)
)
async def release_study(
    user: Releaser,
    redis: RedisDep,
    keys: WorklistKeysDep,
    sla: SlaDep,
    auditor: AuditorDep,
    study_id: StudyId,
) -> StudyDetail:
    """Give a claimed study back to the worklist before its lease ends (engineers may release any lease)."""
    with auditor.recording(user, "release", "study", study_id):
        if not await redis.exists(keys.study(study_id)):
            raise StudyNotFound(study_id)
        outcome = await release(
            redis, keys=keys, study_id=study_id, radiologist=user.name, force=user.role is Role.ENGINEER
        )
        if outcome.status == "conflict":
            raise Conflict(f"study {study_id!r} is claimed by {outcome.holder}, not by you")
        if outcome.status == "not_claimed":
            raise Conflict(f"study {study_id!r} is not claimed (its lease ended or it was never claimed)")
        return await fetch_study(redis=redis, keys=keys, sla=sla, study_id=study_id)


@router.post(
    "/studies/{study_id}/verdict",
    response_model=VerdictPublic,
    responses=error_responses(400, 401, 403, 404, 409),
)
async def post_verdict(
    user: Radiologist,
    redis: RedisDep,
    keys: WorklistKeysDep,
    sink: VerdictSinkDep,
    lookup: VerdictLookupDep,
    policy: PolicyDep,
    auditor: AuditorDep,
    study_id: StudyId,
    body: VerdictCreate,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias=idempotency.HEADER,
            description="Names this submission (1-128 visible ASCII characters, e.g. a UUID): a retry with it "
            "is answered with the verdict recorded under it (no second event); the same key with a different "
            "reading is refused (422). Without it the key is derived from the reading.",
        ),
    ] = None,
) -> VerdictPublic:
    """Record the radiologist's 14 findings. Answered only once Kafka (``cxr.verdicts.v1``) has the verdict;
    the same verdict again is a no-op, a different one from the same radiologist is an amendment."""
    with auditor.recording(user, "verdict", "study", study_id):
        key = idempotency.parse_header(idempotency_key)
        verdict = await record_verdict(
            redis=redis,
            keys=keys,
            sink=sink,
            lookup=lookup,
            radiologist=user.name,
            study_id=study_id,
            body=body,
            lease_s=policy.lease_s,
            idempotency_key=key,
        )
    if verdict.kind == "amendment" and not verdict.replayed:
        auditor.record(user, "amend", "verdict", "ok", study_id=study_id, status_code=200)
    return verdict
