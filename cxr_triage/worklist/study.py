"""The study hash's contract: one scored study written by ``lua/upsert.lua`` (the worker's side, sync).

A study is scored once per role: the first serving prediction written wins, with the tier it was filed into
(hash field ``tier``), the arm that ordered it (``arm``: ``champion``, or ``canary`` when a canary's score
orders it) and its shadow prediction if it had one (key ``{prefix}:shadow:{id}``, the event's JSON). An image
is read once: the study's images are a hash (``{prefix}:images:{id}``, image id -> ``ImagePredictionV1``
JSON) and each read image's maps a key (``{prefix}:cam:{id}:{image id}``). A later write for the same study
adds only images not known yet (a late image); it raises the study's priority and tier to the new image's
when that is more urgent and the study is still unread (hash field ``image_id`` names the image the study's
values are of). Anything else changes nothing and gets the stored predictions back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from cxr_triage.cams import CamMaps
from cxr_triage.events import ImagePredictionV1, PredictionEventV1, StudyEventV1
from cxr_triage.sla import Tier
from cxr_triage.worklist.keys import WorklistKeys
from cxr_triage.worklist.scripts import sync_script, text


@dataclass(frozen=True)
class StoredScore:
    """The prediction as stored: this write's when ``changed``, else the one written first."""

    changed: bool  # something new was written: the study's first write, or a new image (``amended``)
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
    amended: bool = False  # a later write that added images to a study already scored
    image_id: str | None = None  # the image the study's values are of ("" before studies kept images)
    images: tuple[ImagePredictionV1, ...] = ()

    @property
    def first(self) -> bool:
        return self.changed and not self.amended


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
    image_cams: Mapping[str, CamMaps] | None = None,
) -> StoredScore | None:
    """Write a scored study (hash, worklist entry, maps, shadow prediction) unless it was scored before.

    ``published``: the prediction comes from Kafka itself (``worklist rebuild``), so it is marked published.

    With a pipeline as ``client`` the script is queued and None is returned: read the reply with
    ``stored_score``.
    """
    study_id = prediction.study_id
    images = _images_of(study, prediction)
    reply = sync_script(client, "upsert")(
        keys=[
            keys.study(study_id),
            keys.worklist,
            keys.cam(study_id),
            keys.read,
            keys.shadow(study_id),
            keys.images(study_id),
            *(keys.image_cam(study_id, image.image_id) for image in images),
        ],
        args=_arguments(
            study, prediction, tier, cams, images, image_cams or {}, published=published, shadow=shadow
        ),
        client=client,
    )
    if isinstance(client, redis.client.Pipeline):
        return None
    return stored_score(reply)


def stored_score(reply: Any) -> StoredScore:
    """The upsert script's reply."""
    changed, version, scored_at, priority, probabilities, tier, published, arm, threshold, shadow = reply[:10]
    image_id, images = reply[10:]
    return StoredScore(
        changed=int(changed) > 0,
        amended=int(changed) == 2,
        image_id=text(image_id) or None,
        images=tuple(ImagePredictionV1.model_validate_json(text(raw)) for raw in images),
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


def _images_of(study: StudyEventV1, prediction: PredictionEventV1) -> tuple[ImagePredictionV1, ...]:
    """The prediction's images, or for one from before predictions listed them, its study's images unread
    but for the one it was made of (the study's top-level image)."""
    if prediction.images:
        return prediction.images
    primary = study.primary_image
    reading = {
        "model_version": prediction.model_version,
        "probabilities": prediction.probabilities,
        "priority": prediction.priority,
        "tier": prediction.tier,
        "scored_at": prediction.scored_at,
    }
    return tuple(
        ImagePredictionV1(**image.model_dump(), **(reading if image == primary else {}))
        for image in study.all_images
    )


def _image_arguments(image: ImagePredictionV1, maps: CamMaps | None, order: int) -> list[str | bytes]:
    read = image.scored
    return [
        image.image_id,
        repr(image.priority) if read else "",
        image.tier.value if read and image.tier else "",
        image.model_version or "",
        image.scored_at.isoformat() if image.scored_at else "",
        json.dumps(image.probabilities) if read else "",
        # The maps' shape and the image's place in the study ride along (``ImagePredictionV1`` ignores them):
        # the API needs them to decode the maps and to list the images in the order they were sent.
        json.dumps(
            image.model_dump(mode="json")
            | {"order": order}
            | ({} if maps is None else {"cam_h": maps.height, "cam_w": maps.width})
        ),
        b"" if maps is None else maps.data,
    ]


def _arguments(
    study: StudyEventV1,
    prediction: PredictionEventV1,
    tier: Tier,
    cams: CamMaps | None,
    images: tuple[ImagePredictionV1, ...],
    image_cams: Mapping[str, CamMaps],
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
        prediction.image_id or "",
        str(len(images)),
    ]
    per_image = [
        item
        for order, image in enumerate(images)
        for item in _image_arguments(image, image_cams.get(image.image_id), order)
    ]
    return [*head, *per_image, *(item for pair in fields.items() for item in pair)]
