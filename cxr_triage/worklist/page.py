"""One page of the worklist in one round trip: ``lua/page.lua`` (the API's side, asyncio)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio

from cxr_triage.sla import TIERS, SlaPolicy, Tier
from cxr_triage.worklist.keys import WorklistKeys
from cxr_triage.worklist.scripts import async_script, now_arg, tier_waits


@dataclass(frozen=True)
class PageRow:
    study_id: str
    status: str  # "unclaimed" | "claimed"
    tier: Tier  # the tier the index holds the study in
    effective_priority: float  # as page.lua computed it (the definition of the order)
    claimed_by: str | None
    claimed_at: float | None
    expires_at: float | None
    study: dict[str, str]


@dataclass(frozen=True)
class Page:
    total: int
    rows: list[PageRow]


async def read_page(
    client: redis.asyncio.Redis,
    *,
    keys: WorklistKeys,
    policy: SlaPolicy,
    offset: int = 0,
    limit: int = 50,
    tiers: tuple[Tier, ...] = TIERS,
    waiting: bool = True,
    leased: bool = True,
    min_priority: float = 0.0,
    finding: str | None = None,
    min_probability: float = 0.5,
    now: float | None = None,
) -> Page:
    """Unread studies of ``tiers`` by effective priority, with each study's hash.

    ``waiting`` / ``leased`` select unclaimed and claimed studies; ``min_priority`` filters by model priority;
    ``finding`` (one of the 14 labels) keeps studies whose model probability of it is ``min_probability`` or
    more.
    """
    args = [
        keys.prefix,
        now_arg(now),
        str(offset),
        str(limit),
        "1" if waiting else "0",
        "1" if leased else "0",
        repr(float(min_priority)),
        finding or "",
        repr(float(min_probability)),
        *tier_waits(policy, tiers),
    ]
    return _page_from(await async_script(client, "page")(args=args, client=client))


def _page_from(reply: Any) -> Page:
    total, rows = reply
    out = []
    for raw in rows:
        row = json.loads(raw)
        holder = row["holder"]
        out.append(
            PageRow(
                study_id=row["id"],
                status="claimed" if holder else "unclaimed",
                tier=Tier(row["tier"]),
                effective_priority=float(row["effective"]),
                claimed_by=holder or None,
                claimed_at=float(row["claimed_at"]) if row["claimed_at"] else None,
                expires_at=float(row["expires_at"]) if row["expires_at"] else None,
                # cjson writes an empty table as {} but a missing hash could come back as []
                study=row["study"] if isinstance(row["study"], dict) else {},
            )
        )
    return Page(total=int(total), rows=out)
