"""The Redis worklist projection: one hash per study and the ``worklist`` sorted set, written idempotently.

Each study is written by one Lua script (``cxr_triage.worklist.study``), so its hash, its worklist entry,
its images and its activation maps change together, and all studies of a batch go in one pipeline (one round
trip). The rule, in the script: **a study is scored once, an image is read once**. The first prediction
written wins; a later one for the same study (a Kafka replay after a crash or a rebalance, or the same study
reaching a worker after a model version switch) changes nothing, not even ``scored_at``, unless it brings an
image the study did not have (a late image): that image is added, and it raises the study's priority and tier
if it is more urgent while the study waits. The script returns the stored prediction and tier so that the
worker republishes exactly it and files the study into the tier stored. So a version switch never re-scores
or re-tiers what is already on the worklist, and a study taken off the worklist (read) is never put back.

Keys written: ``{prefix}:study:{id}`` (hash: the serving prediction, its ``tier``, its ``arm``, the study's
image reference, and ``cam_h`` / ``cam_w`` when maps are stored), ``{prefix}:worklist`` (sorted set by
priority), ``{prefix}:cam:{id}`` (the maps as float16 bytes, C order, 14 x cam_h x cam_w; see
``cxr_triage.cams``) and, during a shadow or canary rollout, ``{prefix}:shadow:{id}`` (the study's shadow
prediction, decided by the same first write: a study is scored once per role).

Then every study is filed into its SLA tier (``cxr_triage.worklist.index``, idempotent) with the priority and
tier as stored, in a second round trip: also for replays, so that a worker that died between the two writes
leaves no scored study unfiled once its batch is read again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import redis

from cxr_triage.cams import CamMaps
from cxr_triage.events import ImagePredictionV1, PredictionEventV1, StudyEventV1
from cxr_triage.redis_keys import RedisKeys
from cxr_triage.sla import SlaPolicy, Tier
from cxr_triage.worklist.index import index_scored_study
from cxr_triage.worklist.keys import WorklistKeys
from cxr_triage.worklist.scripts import text
from cxr_triage.worklist.study import StoredScore, mark_published, stored_score, upsert_study
from inference_worker.errors import StageUnavailable

STAGE = "redis"


@dataclass(frozen=True)
class WorklistEntry:
    study: StudyEventV1
    prediction: PredictionEventV1  # the serving one: it orders the worklist
    cams: CamMaps | None = None  # the maps of the image the prediction's values are of
    shadow: PredictionEventV1 | None = None  # recorded beside it (role shadow), during a rollout
    image_cams: Mapping[str, CamMaps] = field(default_factory=dict)  # every read image's maps, by image id

    @property
    def tier(self) -> Tier:
        """The prediction's tier: the thresholds of the model that scored it (the worker always sets it)."""
        if self.prediction.tier is None:
            raise ValueError(f"prediction for {self.prediction.study_id} has no tier: it cannot be filed")
        return self.prediction.tier


@dataclass(frozen=True)
class WriteOutcome:
    """The prediction as stored: this write's when ``changed``, else the one written first."""

    changed: bool
    model_version: str
    scored_at: datetime
    priority: float
    probabilities: dict[str, float]
    tier: Tier
    status: str = ""  # tier index: "waiting", "claimed" (leased, left there) or "read" (left alone)
    published: bool = False  # Kafka acknowledged this prediction before (see mark_published)
    arm: str = ""  # the arm stored with the study ("" for one written before studies kept it)
    threshold: float | None = None
    shadow: PredictionEventV1 | None = None  # the shadow prediction stored with it, if any
    amended: bool = False  # ``changed`` by a late image of a study scored before
    image_id: str | None = None
    images: tuple[ImagePredictionV1, ...] = ()

    @property
    def first(self) -> bool:
        """The study's first write (not a replay, not a late image)."""
        return self.changed and not self.amended

    def applied_to(self, prediction: PredictionEventV1) -> PredictionEventV1:
        """``prediction`` with the stored values: what a replay or a late image publishes."""
        stored: dict[str, object] = {
            "model_version": self.model_version,
            "scored_at": self.scored_at,
            "priority": self.priority,
            "probabilities": self.probabilities,
            "tier": self.tier,
        }
        if self.images and prediction.images:  # an event from before studies had images stays one without
            stored.update(image_id=self.image_id, images=_in_order(self.images, prediction.images))
        if self.arm:
            # Stored with its arm, so its threshold too: a replay under another rollout (this batch's serving
            # prediction from the other model) republishes the first one whole.
            stored.update(role="serving", arm=self.arm, threshold=self.threshold)
        return PredictionEventV1.model_validate({**prediction.model_dump(), **stored})


class WorklistWriter(Protocol):
    def write(self, entries: Sequence[WorklistEntry]) -> list[WriteOutcome]: ...

    def mark_published(self, study_ids: Sequence[str]) -> None: ...


class RedisWorklist:
    def __init__(self, client: redis.Redis, keys: RedisKeys, *, policy: SlaPolicy) -> None:
        self._client = client
        self._keys = WorklistKeys(keys.prefix)
        self._policy = policy

    def write(self, entries: Sequence[WorklistEntry]) -> list[WriteOutcome]:
        if not entries:
            return []
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for entry in entries:
                    upsert_study(
                        pipe,
                        keys=self._keys,
                        study=entry.study,
                        prediction=entry.prediction,
                        tier=entry.tier,
                        cams=entry.cams,
                        shadow=entry.shadow,
                        image_cams=entry.image_cams,
                    )
                stored = [stored_score(reply) for reply in pipe.execute()]
            with self._client.pipeline(transaction=False) as pipe:
                for entry, score in zip(entries, stored, strict=True):
                    index_scored_study(
                        pipe,
                        keys=self._keys,
                        policy=self._policy,
                        study_id=entry.prediction.study_id,
                        priority=score.priority,
                        tier=score.tier,
                        received_at=entry.study.received_at,
                    )
                statuses = pipe.execute()
        except redis.RedisError as exc:
            raise StageUnavailable(STAGE, f"{type(exc).__name__}: {exc}") from exc
        return [_outcome(score, text(status)) for score, status in zip(stored, statuses, strict=True)]

    def mark_published(self, study_ids: Sequence[str]) -> None:
        if not study_ids:
            return
        try:
            mark_published(self._client, keys=self._keys, study_ids=study_ids)
        except redis.RedisError as exc:
            raise StageUnavailable(STAGE, f"{type(exc).__name__}: {exc}") from exc


def _outcome(score: StoredScore, status: str) -> WriteOutcome:
    return WriteOutcome(
        changed=score.changed,
        model_version=score.model_version,
        scored_at=score.scored_at,
        priority=score.priority,
        probabilities=score.probabilities,
        tier=score.tier,
        status=status,
        published=score.published,
        arm=score.arm,
        threshold=score.threshold,
        shadow=score.shadow,
        amended=score.amended,
        image_id=score.image_id,
        images=score.images,
    )


def _in_order(
    stored: tuple[ImagePredictionV1, ...], event: tuple[ImagePredictionV1, ...]
) -> tuple[ImagePredictionV1, ...]:
    """The stored images in the event's order (the order the sender gave them), any others after, by id."""
    rank = {image.image_id: i for i, image in enumerate(event)}
    return tuple(sorted(stored, key=lambda image: (rank.get(image.image_id, len(rank)), image.image_id)))
