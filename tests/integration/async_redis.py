"""Calling the API's asyncio worklist wrappers from plain tests: one event loop and one client per caller."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import redis.asyncio

T = TypeVar("T")


class AsyncRedis:
    """``aio(wrapper, **kwargs)`` runs ``await wrapper(client, **kwargs)`` on this caller's loop and client."""

    def __init__(self, url: str) -> None:
        self._runner = asyncio.Runner()
        self.client = redis.asyncio.Redis.from_url(url, decode_responses=True)

    def __call__(self, wrapper: Callable[..., Coroutine[Any, Any, T]], /, **kwargs: Any) -> T:
        return self._runner.run(wrapper(self.client, **kwargs))

    def close(self) -> None:
        self._runner.run(self.client.aclose())
        self._runner.close()


@contextlib.contextmanager
def async_redis(url: str) -> Iterator[AsyncRedis]:
    aio = AsyncRedis(url)
    try:
        yield aio
    finally:
        aio.close()
