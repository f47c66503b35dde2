"""Leases on waiting studies: claim, release, reserve (for a verdict), complete (the API's side, asyncio).

Each is one script of ``lua/``; the lease state is described in the package docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio

from cxr_triage.sla import SlaPolicy, Tier
from cxr_triage.worklist.keys import WorklistKeys
from cxr_triage.worklist.scripts import async_script, now_arg, text, tier_names, tier_waits


@dataclass(frozen=True)
class Claim:
    study_id: str
    tier: Tier
    effective_priority: float  # as claim.lua computed it when it chose the study
    expires_at: float


@dataclass(frozen=True)
class Outcome:
    """What a state-changing script found: ``status`` and the lease holder it concerned (or "")."""

    status: str
    holder: str


def _outcome(reply: Any) -> Outcome:
    status, holder = (text(v) for v in reply)
    return Outcome(status, holder)


async def claim_next(
    client: redis.asyncio.Redis,
    *,
    keys: WorklistKeys,
    policy: SlaPolicy,
    radiologist: str,
    lease_s: float,
    now: float | None = None,
) -> Claim | None:
    """Lease the waiting study of highest effective priority to ``radiologist``; None if none waits."""
    args = [keys.prefix, now_arg(now), radiologist, repr(float(lease_s)), *tier_waits(policy)]
    reply = await async_script(client, "claim")(args=args, client=client)
    if not reply:
        return None
    study_id, tier, effective, expires = (text(v) for v in reply)
    return Claim(study_id, Tier(tier), float(effective), float(expires))


async def release(
    client: redis.asyncio.Redis,
    *,
    keys: WorklistKeys,
    study_id: str,
    radiologist: str,
    force: bool = False,
    now: float | None = None,
) -> Outcome:
    """Return a leased study to its tier: ``released``, ``not_claimed``, or ``conflict`` (another holder)."""
    args = [keys.prefix, now_arg(now), study_id, radiologist, "1" if force else "0"]
    return _outcome(await async_script(client, "release")(args=args, client=client))


async def reserve(
    client: redis.asyncio.Redis,
    *,
    keys: WorklistKeys,
    study_id: str,
    radiologist: str,
    lease_s: float,
    now: float | None = None,
) -> Outcome:
    """Hold a study for ``radiologist`` while a verdict is published.

    ``reserved`` (it was waiting: now leased to them), ``held`` (already theirs), ``read``, ``unindexed``
    (scored but not in the index), or ``conflict`` (leased to someone else).
    """
    args = [keys.prefix, now_arg(now), study_id, radiologist, repr(float(lease_s)), *tier_names()]
    return _outcome(await async_script(client, "reserve")(args=args, client=client))


async def complete(
    client: redis.asyncio.Redis, *, keys: WorklistKeys, study_id: str, now: float | None = None
) -> str:
    """Mark a study read (remove it from waiting, leases and the worklist); returns the lease holder or ""."""
    args = [keys.prefix, now_arg(now), study_id, *tier_names()]
    return text(await async_script(client, "complete")(args=args, client=client))
