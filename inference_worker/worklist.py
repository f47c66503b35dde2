"""The Redis worklist projection: one hash per study and the ``worklist`` sorted set, written idempotently.

Each study is written by one Lua script, so its hash, its worklist entry and its activation maps change
together, and all studies of a batch go in one pipeline (one round trip). The rule, in the script: **a study
is scored once**. The first prediction written wins; any later one for the same study (a Kafka replay after a
crash or a rebalance, or the same study reaching a worker after a model version switch) changes nothing, not
even ``scored_at``, and the script returns the stored prediction so that the worker republishes exactly it.
So a version switch never re-scores what is already on the worklist, and a study taken off the worklist (read)
is never put back.

Keys written: ``{prefix}:study:{id}`` (hash: the prediction, the study's image reference, and ``cam_h`` /
``cam_w`` when maps are stored), ``{prefix}:worklist`` (sorted set by priority) and ``{prefix}:cam:{id}``
(the maps as float16 bytes, C order, 14 x cam_h x cam_w; see ``cxr_triage.cams``).

Then every study is filed into its SLA tier (``cxr_triage.worklist_index.index_scored_study``, idempotent)
with the priority as stored, in a second round trip: also for replays, so that a worker that died between
the two writes leaves no scored study unfiled once its batch is read again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Final, Protocol

import redis
from redis.commands.core import Script

from cxr_triage.events import PredictionEventV1, StudyEventV1
from cxr_triage.redis_keys import RedisKeys
from cxr_triage.sla import SlaPolicy
from cxr_triage.worklist_index import WorklistKeys, index_scored_study
from cxr_triage.cams import CamMaps
from inference_worker.errors import StageUnavailable

STAGE = "redis"

# KEYS: study hash, worklist, maps. ARGV: study id, priority, model version, scored_at, probabilities (JSON),
# maps (bytes or ""), cam_h, cam_w, then field/value pairs.
_UPSERT: Final = """
local stored = redis.call('HMGET', KEYS[1], 'model_version', 'scored_at', 'priority', 'probabilities')
if stored[1] and stored[2] and stored[3] and stored[4] then
  return {0, stored[1], stored[2], stored[3], stored[4]}
end
redis.call('HSET', KEYS[1], 'priority', ARGV[2], 'model_version', ARGV[3], 'scored_at', ARGV[4],
           'probabilities', ARGV[5], unpack(ARGV, 9))
if ARGV[6] ~= '' then
  redis.call('SET', KEYS[3], ARGV[6])
  redis.call('HSET', KEYS[1], 'cam_h', ARGV[7], 'cam_w', ARGV[8])
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return {1, ARGV[3], ARGV[4], ARGV[2], ARGV[5]}
"""


@dataclass(frozen=True)
class WorklistEntry:
    study: StudyEventV1
    prediction: PredictionEventV1
    cams: CamMaps | None = None


@dataclass(frozen=True)
class WriteOutcome:
    """The prediction as stored: this write's when ``changed``, else the one written first."""

    changed: bool
    model_version: str
    scored_at: datetime
    priority: float
    probabilities: dict[str, float]
    status: str = ""  # tier index: "waiting", "claimed" (leased, left there) or "read" (left alone)

    def applied_to(self, prediction: PredictionEventV1) -> PredictionEventV1:
        """``prediction`` with the stored values: what a replay republishes."""
        stored = {
            "model_version": self.model_version,
            "scored_at": self.scored_at,
            "priority": self.priority,
            "probabilities": self.probabilities,
        }
        return PredictionEventV1.model_validate({**prediction.model_dump(), **stored})


class WorklistWriter(Protocol):
    def write(self, entries: Sequence[WorklistEntry]) -> list[WriteOutcome]: ...


class RedisWorklist:
    def __init__(self, client: redis.Redis, keys: RedisKeys, *, policy: SlaPolicy) -> None:
        self._client = client
        self._keys = keys
        self._index_keys = WorklistKeys(keys.prefix)
        self._policy = policy
        self._upsert: Script = client.register_script(_UPSERT)

    def write(self, entries: Sequence[WorklistEntry]) -> list[WriteOutcome]:
        if not entries:
            return []
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for entry in entries:
                    study_id = entry.prediction.study_id
                    self._upsert(
                        keys=[
                            self._keys.study(study_id),
                            self._keys.worklist,
                            self._index_keys.cam(study_id),
                        ],
                        args=_arguments(entry),
                        client=pipe,
                    )
                outcomes = [_outcome(reply) for reply in pipe.execute()]
            with self._client.pipeline(transaction=False) as pipe:
                for entry, outcome in zip(entries, outcomes, strict=True):
                    index_scored_study(
                        pipe,
                        keys=self._index_keys,
                        policy=self._policy,
                        study_id=entry.prediction.study_id,
                        priority=outcome.priority,
                        received_at=entry.study.received_at,
                    )
                statuses = pipe.execute()
        except redis.RedisError as exc:
            raise StageUnavailable(STAGE, f"{type(exc).__name__}: {exc}") from exc
        return [
            replace(outcome, status=_text(status)) for outcome, status in zip(outcomes, statuses, strict=True)
        ]


def _arguments(entry: WorklistEntry) -> list[str | bytes]:
    prediction, study, cams = entry.prediction, entry.study, entry.cams
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
        b"" if cams is None else cams.data,
        "" if cams is None else str(cams.height),
        "" if cams is None else str(cams.width),
    ]
    return [*head, *(item for pair in fields.items() for item in pair)]


def _text(value: bytes | str | int) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _outcome(reply: list[bytes | str | int]) -> WriteOutcome:
    changed, version, scored_at, priority, probabilities = reply
    return WriteOutcome(
        changed=bool(changed),
        model_version=_text(version),
        scored_at=datetime.fromisoformat(_text(scored_at)),
        priority=float(_text(priority)),
        probabilities={str(k): float(v) for k, v in json.loads(_text(probabilities)).items()},
    )
