"""The study hash's contract: one scored study written by ``lua/upsert.lua`` (the worker's side, sync).

A study is scored once: the first prediction written wins, with the tier it was filed into (hash field
``tier``). A later write for the same study changes nothing and gets the stored prediction back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from cxr_triage.cams import CamMaps
from cxr_triage.events import PredictionEventV1, StudyEventV1
from cxr_triage.sla import Tier
from cxr_triage.worklist.keys import WorklistKeys
from cxr_triage.worklist.scripts import sync_script, text


@dataclass(frozen=True)
class StoredScore:
    """The prediction as stored: this write's when ``changed``, else the one written first."""

    changed: bool
    model_version: str
    scored_at: datetime
    priority: float
    probabilities: dict[str, float]
    tier: Tier


def upsert_study(
    client: redis.Redis,
    *,
    keys: WorklistKeys,
    study: StudyEventV1,
    prediction: PredictionEventV1,
    tier: Tier,
    cams: CamMaps | None = None,
) -> StoredScore | None:
    """Write a scored study (hash, worklist entry, maps) unless it was scored before.

    With a pipeline as ``client`` the script is queued and None is returned: read the reply with
    ``stored_score``.
    """
    study_id = prediction.study_id
    reply = sync_script(client, "upsert")(
        keys=[keys.study(study_id), keys.worklist, keys.cam(study_id), keys.read],
        args=_arguments(study, prediction, tier, cams),
        client=client,
    )
    if isinstance(client, redis.client.Pipeline):
        return None
    return stored_score(reply)


def stored_score(reply: Any) -> StoredScore:
    """The upsert script's reply."""
    changed, version, scored_at, priority, probabilities, tier = reply
    return StoredScore(
        changed=bool(int(changed)),
        model_version=text(version),
        scored_at=datetime.fromisoformat(text(scored_at)),
        priority=float(text(priority)),
        probabilities={str(k): float(v) for k, v in json.loads(text(probabilities)).items()},
        tier=Tier(text(tier)),
    )


def _arguments(
    study: StudyEventV1, prediction: PredictionEventV1, tier: Tier, cams: CamMaps | None
) -> list[str | bytes]:
    fields = {
        "study_id": prediction.study_id,
        "model_name": prediction.model_name,
        "received_at": prediction.received_at.isoformat(),
        "image_uri": study.image_uri,
        "content_type": study.content_type,
        "sha256": study.sha256,
    }
    head: list[str | bytes] = [
        prediction.study_id,
        repr(prediction.priority),
        prediction.model_version,
        prediction.scored_at.isoformat(),
        json.dumps(prediction.probabilities),
        tier.value,
        b"" if cams is None else cams.data,
        "" if cams is None else str(cams.height),
        "" if cams is None else str(cams.width),
    ]
    return [*head, *(item for pair in fields.items() for item in pair)]
