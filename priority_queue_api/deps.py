"""FastAPI dependencies, as ``Annotated`` aliases used by the routes: state, bearer-token users and roles."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis.asyncio import Redis

from cxr_triage.events import AuditAction
from cxr_triage.image_store import ImageStore
from cxr_triage.settings import Settings
from cxr_triage.sla import SlaPolicy
from cxr_triage.worklist.keys import WorklistKeys
from priority_queue_api.config import ApiPolicy
from priority_queue_api.events_out import Auditor, EventSink
from priority_queue_api.images import DerivedCache
from priority_queue_api.uploads import UploadPublisher
from priority_queue_api.users import Role, User
from priority_queue_api.verdict_lookup import VerdictLookup


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_render_cache(request: Request) -> DerivedCache:
    cache: DerivedCache = request.app.state.render_cache
    return cache


async def get_redis(request: Request) -> Redis:
    redis: Redis = request.app.state.redis
    return redis


async def get_redis_bytes(request: Request) -> Redis:
    redis: Redis = request.app.state.redis_bytes
    return redis


async def get_wkeys(request: Request) -> WorklistKeys:
    keys: WorklistKeys = request.app.state.wkeys
    return keys


async def get_policy(request: Request) -> ApiPolicy:
    policy: ApiPolicy = request.app.state.policy
    return policy


async def get_sla(request: Request) -> SlaPolicy:
    sla: SlaPolicy = request.app.state.sla
    return sla


async def get_auditor(request: Request) -> Auditor:
    auditor: Auditor = request.app.state.auditor
    return auditor


async def get_verdict_sink(request: Request) -> EventSink:
    sink: EventSink = request.app.state.verdict_sink
    return sink


async def get_verdict_lookup(request: Request) -> VerdictLookup:
    lookup: VerdictLookup = request.app.state.verdict_lookup
    return lookup


async def get_uploads(request: Request) -> UploadPublisher:
    uploads: UploadPublisher = request.app.state.uploads
    return uploads


async def get_store(request: Request) -> ImageStore:
    store: ImageStore = request.app.state.image_store
    return store


SettingsDep = Annotated[Settings, Depends(get_settings)]
RedisDep = Annotated[Redis, Depends(get_redis)]
RedisBytesDep = Annotated[Redis, Depends(get_redis_bytes)]
WorklistKeysDep = Annotated[WorklistKeys, Depends(get_wkeys)]
PolicyDep = Annotated[ApiPolicy, Depends(get_policy)]
SlaDep = Annotated[SlaPolicy, Depends(get_sla)]
AuditorDep = Annotated[Auditor, Depends(get_auditor)]
VerdictSinkDep = Annotated[EventSink, Depends(get_verdict_sink)]
VerdictLookupDep = Annotated[VerdictLookup, Depends(get_verdict_lookup)]
UploadsDep = Annotated[UploadPublisher, Depends(get_uploads)]
StoreDep = Annotated[ImageStore, Depends(get_store)]
RenderCacheDep = Annotated[DerivedCache, Depends(get_render_cache)]

_bearer = HTTPBearer(auto_error=False, description="A token from `cxr-triage users add NAME --role ROLE`")


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(status_code=401, detail=message, headers={"WWW-Authenticate": "Bearer"})


async def current_user(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> User:
    if credentials is None:
        raise _unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    user = request.app.state.users.authenticate(credentials.credentials)
    if user is None:
        raise _unauthorized("invalid or revoked token")
    return user


CurrentUser = Annotated[User, Depends(current_user)]


def require(*roles: Role) -> Callable[[Request, User], Awaitable[User]]:
    """A dependency admitting only ``roles``; anyone else gets 403 (and an audit record of the denial)."""
    allowed = ", ".join(role.value for role in roles)

    async def dependency(request: Request, user: CurrentUser) -> User:
        if user.role not in roles:
            route = getattr(request.scope.get("route"), "path", "unmatched")
            request.app.state.auditor.record(
                user, _action_of(request.method, route), route, "denied", status_code=403
            )
            raise HTTPException(
                status_code=403, detail=f"role {user.role.value!r} may not do this (allowed: {allowed})"
            )
        return user

    return dependency


def _action_of(method: str, route: str) -> AuditAction:
    suffixes: tuple[tuple[str, AuditAction], ...] = (
        ("/claim", "claim"),
        ("/release", "release"),
        ("/verdict", "verdict"),
    )
    for suffix, action in suffixes:
        if route.endswith(suffix):
            return action
    return "upload" if method == "POST" else "view"


Radiologist = Annotated[User, Depends(require(Role.RADIOLOGIST))]
Viewer = Annotated[User, Depends(require(Role.RADIOLOGIST, Role.ENGINEER))]
Releaser = Annotated[User, Depends(require(Role.RADIOLOGIST, Role.ENGINEER))]
Producer = Annotated[User, Depends(require(Role.PRODUCER))]
