"""Reading the worklist projection (written by the workers, reading state kept by ``cxr_triage.worklist``)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from cxr_triage.labels import LABELS, NO_FINDING
from cxr_triage.sla import TIERS, SlaPolicy, Tier
from cxr_triage.worklist.claims import Claim, claim_next
from cxr_triage.worklist.keys import WorklistKeys
from cxr_triage.worklist.page import PageRow, read_page
from priority_queue_api.errors import StudyNotFound
from priority_queue_api.models import (
    ImagePublic,
    StudyDetail,
    TopFinding,
    VerdictSummary,
    WorklistPublic,
)

TOP_FINDINGS = 3


def _ts(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def study_fields(fields: Mapping[str, str]) -> dict[str, Any]:
    """The worker's hash as the fields of ``StudyPublic`` (not yet validated)."""
    probabilities = json.loads(fields["probabilities"])
    return {
        "study_id": fields["study_id"],
        "priority": float(fields["priority"]),
        "probabilities": {label: float(probabilities[label]) for label in LABELS},
        "model_name": fields["model_name"],
        "model_version": fields["model_version"],
        "received_at": datetime.fromisoformat(fields["received_at"]),
        "scored_at": datetime.fromisoformat(fields["scored_at"]),
    }


def top_findings(probabilities: Mapping[str, float]) -> list[dict[str, Any]]:
    ranked = sorted(
        ((label, p) for label, p in probabilities.items() if label != NO_FINDING),
        key=lambda kv: kv[1],
        reverse=True,
    )
    return [{"label": label, "probability": p} for label, p in ranked[:TOP_FINDINGS]]


def stored_tier(fields: Mapping[str, str], lease: Mapping[str, str], sla: SlaPolicy) -> Tier:
    """The tier the study was filed into (by its model's thresholds, stored in its hash)."""
    if fields.get("tier"):
        return Tier(fields["tier"])
    if lease.get("tier"):
        return Tier(lease["tier"])
    # Only a study written before the hash kept its tier: the fallback thresholds are the best guess.
    return sla.tier_for(float(fields["priority"]))


def sla_fields(
    priority: float,
    received_at: datetime,
    sla: SlaPolicy,
    *,
    now: float,
    tier: Tier,
    effective: float | None = None,
) -> dict[str, Any]:
    """SLA times of a study; ``effective`` is the page script's value where one ran (the definition)."""
    max_wait = sla.max_wait_s(tier)
    received = received_at.timestamp()
    waited = max(now - received, 0.0)
    if effective is None:
        effective = sla.effective_priority(priority=priority, tier=tier, waited_s=waited)
    return {
        "tier": tier,
        "max_wait_s": max_wait,
        "waited_s": waited,
        "time_left_s": max_wait - waited,
        "due_at": _ts(received + max_wait),
        "overdue": waited > max_wait,
        "effective_priority": effective,
    }


def lease_fields(radiologist: str, claimed_at: float, expires_at: float, *, now: float) -> dict[str, Any]:
    return {
        "radiologist": radiologist,
        "claimed_at": _ts(claimed_at),
        "expires_at": _ts(expires_at),
        "expires_in_s": max(expires_at - now, 0.0),
    }


def _item(row: PageRow, sla: SlaPolicy, now: float) -> dict[str, Any]:
    fields = study_fields(row.study)
    lease = None
    if row.claimed_by and row.claimed_at is not None and row.expires_at is not None:
        lease = lease_fields(row.claimed_by, row.claimed_at, row.expires_at, now=now)
    return fields | {
        "status": "claimed" if lease else "unclaimed",
        "sla": sla_fields(
            fields["priority"],
            fields["received_at"],
            sla,
            now=now,
            tier=row.tier,
            effective=row.effective_priority,
        ),
        "lease": lease,
        "top_findings": top_findings(fields["probabilities"]),
    }


async def fetch_worklist(
    *,
    redis: Redis,
    keys: WorklistKeys,
    sla: SlaPolicy,
    limit: int,
    offset: int,
    tiers: tuple[Tier, ...] = TIERS,
    status: str | None = None,
    min_priority: float = 0.0,
    finding: str | None = None,
    min_probability: float = 0.5,
) -> WorklistPublic:
    """One page; ``finding`` keeps studies whose model probability of it is at least ``min_probability``
    (page.lua filters, so paging and ``total`` stay exact)."""
    now = time.time()
    page = await read_page(
        redis,
        keys=keys,
        policy=sla,
        offset=offset,
        limit=limit,
        tiers=tiers,
        waiting=status in (None, "unclaimed"),
        leased=status in (None, "claimed"),
        min_priority=min_priority,
        finding=finding,
        min_probability=min_probability,
        now=now,
    )
    # A study whose hash vanished (removed by hand) is skipped rather than failing the whole page.
    items = [_item(row, sla, now) for row in page.rows if row.study]
    # One validation of the whole page (the hashes come from another service, so they are checked).
    return WorklistPublic.model_validate(
        {"items": items, "total": page.total, "limit": limit, "offset": offset, "generated_at": _ts(now)}
    )


async def fetch_study(*, redis: Redis, keys: WorklistKeys, sla: SlaPolicy, study_id: str) -> StudyDetail:
    now = time.time()
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hgetall(keys.study(study_id))
        pipe.hgetall(keys.lease(study_id))
        pipe.zscore(keys.read, study_id)
        pipe.zscore(keys.worklist, study_id)
        pipe.zscore(keys.claims, study_id)
        pipe.exists(keys.cam(study_id))
        pipe.hvals(keys.verdicts(study_id))
        pipe.hvals(keys.images(study_id))
        fields, lease, read_at, on_worklist, lease_end, has_cam, verdicts, images = await pipe.execute()
    if not fields:
        raise StudyNotFound(study_id)
    stored = sorted((json.loads(raw) for raw in images), key=lambda image: image.get("order", 0))
    async with redis.pipeline(transaction=False) as pipe:
        for image in stored:
            pipe.exists(keys.image_cam(study_id, image["image_id"]))
        image_cams = await pipe.execute() if stored else []
    # The claims set's score is the lease's real end (what expiry acts on); an expired lease shows as none.
    active = lease if lease and lease_end is not None and lease_end > now else {}
    detail = detail_from(fields, active, read_at, on_worklist, bool(has_cam), verdicts, sla=sla, now=now)
    return detail.model_copy(
        update={
            "images": [
                image_public(study_id, image, primary=image["image_id"] == detail.image_id, has_cam=bool(cam))
                for image, cam in zip(stored, image_cams, strict=True)
            ]
        }
    )


def image_public(study_id: str, image: Mapping[str, Any], *, primary: bool, has_cam: bool) -> ImagePublic:
    """One stored image (``ImagePredictionV1`` JSON) as the API shows it: no store path, links instead."""
    probabilities = image.get("probabilities")
    base = f"/studies/{study_id}/images/{image['image_id']}"
    available = has_cam and image.get("cam_h") is not None
    return ImagePublic(
        image_id=image["image_id"],
        view=image.get("view", "UNKNOWN"),
        flags=list(image.get("flags", [])),
        scored=probabilities is not None,
        primary=primary,
        model_version=image.get("model_version"),
        priority=image.get("priority"),
        tier=image.get("tier"),
        probabilities=probabilities,
        top_findings=[TopFinding(**f) for f in top_findings(probabilities)] if probabilities else [],
        heatmap_available=available,
        image_url=f"{base}/image",
        heatmap_url=f"{base}/heatmap" if available else None,
    )


def detail_from(
    fields: Mapping[str, str],
    lease: Mapping[str, str],
    read_at: float | None,
    on_worklist: float | None,
    has_cam: bool,
    verdicts: list[str],
    *,
    sla: SlaPolicy,
    now: float,
) -> StudyDetail:
    study = study_fields(fields)
    lease_public = None
    if lease:
        lease_public = lease_fields(
            lease["radiologist"], float(lease["claimed_at"]), float(lease["expires_at"]), now=now
        )
    status: Any
    if read_at is not None:
        status = "read"
    elif lease_public is not None:
        status = "claimed"
    elif on_worklist is not None:
        status = "unclaimed"
    else:
        status = "unindexed"
    tier = stored_tier(fields, lease, sla)
    summaries = sorted((_summary(raw) for raw in verdicts), key=lambda v: v.decided_at)
    at = read_at if read_at is not None else now
    return StudyDetail.model_validate(
        study
        | {
            "status": status,
            "sla": sla_fields(study["priority"], study["received_at"], sla, now=at, tier=tier),
            "lease": lease_public,
            "top_findings": top_findings(study["probabilities"]),
            "content_type": fields.get("content_type"),
            "scoring_latency_s": (study["scored_at"] - study["received_at"]).total_seconds(),
            "read_at": _ts(read_at) if read_at is not None else None,
            "heatmap_available": has_cam and "cam_h" in fields and "cam_w" in fields,
            "image_id": fields.get("image_id"),
            "images": [],
            "verdicts": summaries,
        }
    )


def _summary(raw: str) -> VerdictSummary:
    data = json.loads(raw)
    return VerdictSummary(
        verdict_id=data["verdict_id"],
        radiologist=data["radiologist"],
        kind=data["kind"],
        decided_at=datetime.fromisoformat(data["decided_at"]),
    )


async def claim(
    *, redis: Redis, keys: WorklistKeys, sla: SlaPolicy, radiologist: str, lease_s: int
) -> StudyDetail | None:
    taken: Claim | None = await claim_next(
        redis, keys=keys, policy=sla, radiologist=radiologist, lease_s=lease_s
    )
    if taken is None:
        return None
    return await fetch_study(redis=redis, keys=keys, sla=sla, study_id=taken.study_id)
