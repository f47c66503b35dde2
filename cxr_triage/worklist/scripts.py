"""The worklist's Lua scripts: read once from this package, run with EVALSHA through ``register_script``.

``register_script`` only hashes the text (no round trip); the Script sends EVALSHA and, when the server does
not know the script (first use, a restart, ``SCRIPT FLUSH``), loads it and retries. In a pipeline the
pipeline loads its scripts before it executes.
"""

from __future__ import annotations

import time
from functools import cache
from importlib.resources import files
from typing import Any, Final

import redis
import redis.asyncio
from redis.commands.core import AsyncScript, Script

from cxr_triage.sla import TIERS, SlaPolicy, Tier

# Scripts of the tier index get prelude.lua (prefix, now, reap, tiers_from, effective, take) in front.
INDEX_SCRIPTS: Final = frozenset({"index", "claim", "release", "reserve", "complete", "verdict", "page"})
STANDALONE_SCRIPTS: Final = frozenset({"upsert", "mark_published"})


@cache
def source(name: str) -> str:
    """The text of ``lua/{name}.lua`` as it is sent to Redis."""
    if name not in INDEX_SCRIPTS | STANDALONE_SCRIPTS:
        raise ValueError(f"no worklist script named {name!r}")
    lua = files(__package__) / "lua"
    body = (lua / f"{name}.lua").read_text(encoding="utf-8")
    if name in INDEX_SCRIPTS:
        return (lua / "prelude.lua").read_text(encoding="utf-8") + "\n" + body
    return body


def sync_script(client: redis.Redis, name: str) -> Script:
    """Script ``name`` for a sync client or pipeline (the worker's side)."""
    return client.register_script(source(name))


def async_script(client: redis.asyncio.Redis, name: str) -> AsyncScript:
    """Script ``name`` for an asyncio client (the API's side)."""
    return client.register_script(source(name))


def text(value: Any) -> str:
    """A reply as text, whether the client decodes responses or not."""
    return value.decode() if isinstance(value, bytes) else str(value)


def now_arg(now: float | None) -> str:
    """The ``now`` every index script takes (epoch seconds; the tests pass their own clock)."""
    return repr(time.time() if now is None else float(now))


def tier_names() -> list[str]:
    return [tier.value for tier in TIERS]


def tier_waits(policy: SlaPolicy, tiers: tuple[Tier, ...] = TIERS) -> list[str]:
    """``(tier, aging_s)`` pairs, flattened, as ``tiers_from`` in prelude.lua reads them."""
    return [value for tier in tiers for value in (tier.value, repr(policy.aging_s(tier)))]
