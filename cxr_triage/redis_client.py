"""Redis clients built from the settings: the one place that knows the URL and the password."""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio

from cxr_triage.settings import Settings


def _auth(settings: Settings) -> dict[str, Any]:
    # A password inside CXR_REDIS_URL wins over this one (redis-py lets the URL override keywords).
    secret = settings.redis_auth()
    return {} if secret is None else {"password": secret.get_secret_value()}


def open_redis(settings: Settings, **options: Any) -> redis.Redis:
    """A client of ``CXR_REDIS_URL`` with the stack's password; ``options`` go to ``redis.Redis``."""
    return redis.Redis.from_url(settings.redis_url, **_auth(settings), **options)


def open_async_redis(settings: Settings, **options: Any) -> redis.asyncio.Redis:
    """The asyncio twin of ``open_redis``."""
    return redis.asyncio.Redis.from_url(settings.redis_url, **_auth(settings), **options)
