"""A worklist as data, for comparing the Redis state before a loss with the state a rebuild restored.

``snapshot`` reads every key under a prefix except the ephemeral ones (leases, claims, pending verdicts,
verdict locks) and the activation maps (not on any topic), and drops the maps' size fields from study
hashes and from the images' records: what is left is what ``cxr-triage worklist rebuild`` promises to restore.
"""

from __future__ import annotations

import json
from typing import Any, cast

import redis

EPHEMERAL = ("lease", "claims", "verdict-pending", "verdict-lock", "cam")
MAP_FIELDS = ("cam_h", "cam_w")


def snapshot(client: redis.Redis, prefix: str) -> dict[str, Any]:
    """``{key without the prefix: value}``: hashes as dicts, sorted sets as ``{member: score}``."""
    found: dict[str, Any] = {}
    for raw in client.scan_iter(match=f"{prefix}:*", count=1000):
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        name = key[len(prefix) + 1 :]
        if name.split(":", 1)[0] in EPHEMERAL:
            continue
        kind = client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "hash":
            value = dict(client.hgetall(key))
            if name.startswith("study:"):
                value = {k: v for k, v in value.items() if k not in MAP_FIELDS}
            elif name.startswith("images:"):
                value = {k: _without_map_fields(v) for k, v in value.items()}
            found[name] = value
        elif kind == "zset":
            found[name] = dict(cast(Any, client.zrange(key, 0, -1, withscores=True)))
        else:
            found[name] = client.get(key)
    return found


def of_studies(state: dict[str, Any], ids: set[str]) -> dict[str, Any]:
    """The part of a snapshot about ``ids``: their own keys, and their members of the shared sorted sets."""
    out: dict[str, Any] = {}
    for name, value in state.items():
        if name in ("worklist", "read") or name.startswith("unread:"):
            members = {m: s for m, s in value.items() if m in ids}
            if members:
                out[name] = members
        elif name.split(":")[1] in ids:
            out[name] = value
    return out


def _without_map_fields(raw: bytes | str) -> dict[str, Any]:
    record = json.loads(raw)
    return {k: v for k, v in record.items() if k not in MAP_FIELDS}
