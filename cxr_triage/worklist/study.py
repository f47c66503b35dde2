"""The study hash's contract: one scored study written by ``lua/upsert.lua`` (the worker's side, sync).

A study is scored once per role: the first serving prediction written wins, with the tier it was filed into
(hash field ``tier``), the arm that ordered it (``arm``: ``champion``, or ``canary`` when a canary's score
orders it) and its shadow prediction if it had one (key ``{prefix}:shadow:{id}``, the event's JSON). A later
write for the same study changes nothing and gets the stored predictions back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
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
    # Kafka already holds this prediction (acknowledged before): a replayed batch need not publish it again.
    published: bool = False
    arm: str = ""  # "" for a study written before the hash kept its arm
    threshold: float | None = None
    shadow: PredictionEventV1 | None = None


def upsert_study(
    client: redis.Redis,
    *,
    keys: WorklistKeys,
    study: StudyEventV1,
    prediction: PredictionEventV1,
    tier: Tier,
    cams: CamMaps | None = None,
    published: bool = False,
    shadow: PredictionEventV1 | None = None,
) -> StoredScore | None:
    """Write a scored study (hash, worklist entry, maps, shadow prediction) unless it was scored before.

    ``published``: the prediction comes from Kafka itself (``worklist rebuild``), so it is marked published.

    With a pipeline as ``client`` the script is queued and None is returned: read the reply with
    ``stored_score``.
    """
    study_id = prediction.study_id
    reply = sync_script(client, "upsert")(
        keys=[keys.study(study_id), keys.worklist, keys.cam(study_id), keys.read, keys.shadow(study_id)],
        args=_arguments(study, prediction, tier, cams, published=published, shadow=shadow),
        client=client,
    )
    if isinstance(client, redis.client.Pipeline):
        return None
    return stored_score(reply)


def stored_score(reply: Any) -> StoredScore:
    """The upsert script's reply."""
    changed, version, scored_at, priority, probabilities, tier, published, arm, threshold, shadow = reply
    return StoredScore(
        changed=bool(int(changed)),
        model_version=text(version),
        scored_at=datetime.fromisoformat(text(scored_at)),
        priority=float(text(priority)),
        probabilities={str(k): float(v) for k, v in json.loads(text(probabilities)).items()},
        tier=Tier(text(tier)),
        published=text(published) == "1",
        arm=text(arm),
        threshold=float(text(threshold)) if text(threshold) else None,
        shadow=PredictionEventV1.from_bytes(text(shadow)) if text(shadow) else None,
    )


def mark_published(client: redis.Redis, *, keys: WorklistKeys, study_ids: Iterable[str]) -> None:
    """Note that Kafka acknowledged these studies' predictions (after the ack, before the offsets commit).

    A batch redelivered after a lost commit (a broker restart, a rebalance) then finds them published and
    does not publish them again. Only an existing study hash is marked: a study that was never written (or a
    wiped Redis) is simply published again, identical, which every consumer tolerates.
    """
    with client.pipeline(transaction=False) as pipe:
        for study_id in study_ids:
            sync_script(pipe, "mark_published")(keys=[keys.study(study_id)], client=pipe)
        pipe.execute()


def _arguments(
    study: StudyEventV1,
    prediction: PredictionEventV1,
    tier: Tier,
    cams: CamMaps | None,
    *,
    published: bool = False,
    shadow: PredictionEventV1 | None = None,
) -> list[str | bytes]:
    if prediction.role != "serving" or (shadow is not None and shadow.role != "shadow"):
        raise ValueError(
            f"{prediction.study_id}: the hash takes the serving prediction, the shadow key the shadow"
        )
    fields = {
        "study_id": prediction.study_id,
        "model_name": prediction.model_name,
        "received_at": prediction.received_at.isoformat(),
        "image_uri": study.image_uri,
        "content_type": study.content_type,
        "sha256": study.sha256,
        "arm": prediction.arm,
    }
    if prediction.threshold is not None:
        fields["threshold"] = repr(prediction.threshold)
    if published:
        fields["published"] = "1"
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
        "" if shadow is None else shadow.model_dump_json(),
    ]
    return [*head, *(item for pair in fields.items() for item in pair)]
