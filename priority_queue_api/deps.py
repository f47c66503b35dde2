"""FastAPI dependencies, as ``Annotated`` aliases used by the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis

from cxr_triage.redis_keys import RedisKeys
from cxr_triage.settings import Settings


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_redis(request: Request) -> Redis:
    redis: Redis = request.app.state.redis
    return redis


def get_keys(request: Request) -> RedisKeys:
    return RedisKeys(get_settings(request).redis_key_prefix)


SettingsDep = Annotated[Settings, Depends(get_settings)]
RedisDep = Annotated[Redis, Depends(get_redis)]
KeysDep = Annotated[RedisKeys, Depends(get_keys)]
