"""Filing a scored study into its SLA tier: ``lua/index.lua`` (the worker's side, sync)."""

from __future__ import annotations

from datetime import datetime

import redis

from cxr_triage.sla import SlaPolicy, Tier, received_timestamp
from cxr_triage.worklist.keys import WorklistKeys
from cxr_triage.worklist.scripts import now_arg, sync_script, text, tier_names


def index_scored_study(
    client: redis.Redis,
    *,
    keys: WorklistKeys,
    policy: SlaPolicy,
    study_id: str,
    priority: float,
    tier: Tier,
    received_at: datetime,
    now: float | None = None,
) -> str | None:
    """File a scored study into ``tier`` (idempotent); call after writing its hash.

    The tier is the caller's: the thresholds of the model that scored the study decide it (stored in the
    study hash). ``policy`` gives the tier's maximum wait, which orders the study inside it.
    Returns ``"waiting"``, ``"claimed"`` (leased: left where it is) or ``"read"`` (already read: unchanged).
    With a pipeline as ``client`` the script is queued and None is returned.
    """
    score = policy.index_score(priority=priority, tier=tier, received_ts=received_timestamp(received_at))
    args = [keys.prefix, now_arg(now), study_id, tier.value, repr(score), repr(priority), *tier_names()]
    reply = sync_script(client, "index")(args=args, client=client)
    if isinstance(client, redis.client.Pipeline):
        return None
    return text(reply)
