"""The Redis worklist projection: one hash per study and the ``worklist`` sorted set, written idempotently.

Each study is written by one Lua script, so the hash and its worklist entry change together, and all studies
of a batch go in one pipeline (one round trip). The rules, in the script:

- the same study scored again by the same model version (a Kafka replay) changes nothing, not even
  ``scored_at``: the script returns the stored ``scored_at`` so that the republished prediction matches;
- a new model version overwrites the prediction; it re-ranks the study if the study is still on the worklist
  but never puts back a study that was taken off it (read by a radiologist) since it was first scored.

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
from inference_worker.errors import StageUnavailable

STAGE = "redis"

# KEYS: study hash, worklist. ARGV: study id, priority, model version, scored_at, then field/value pairs.
_UPSERT: Final = """
local current = redis.call('HMGET', KEYS[1], 'model_version', 'scored_at', 'priority')
if current[1] == ARGV[3] and current[2] and current[3] then
  return {0, current[2], current[3]}
end
redis.call('HSET', KEYS[1], 'priority', ARGV[2], 'model_version', ARGV[3], 'scored_at', ARGV[4],
           unpack(ARGV, 5))
if current[2] then
  redis.call('ZADD', KEYS[2], 'XX', ARGV[2], ARGV[1])
else
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
end
return {1, ARGV[4], ARGV[2]}
"""


@dataclass(frozen=True)
class WorklistEntry:
    study: StudyEventV1
    prediction: PredictionEventV1


@dataclass(frozen=True)
class WriteOutcome:
    changed: bool
    scored_at: datetime  # as stored: the earlier time when the write was a replay
    priority: float  # as stored
    status: str = ""  # tier index: "waiting", "claimed" (leased, left there) or "read" (left alone)


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
                        keys=[self._keys.study(study_id), self._keys.worklist],
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


def _arguments(entry: WorklistEntry) -> list[str]:
    prediction, study = entry.prediction, entry.study
    fields = {
        "study_id": prediction.study_id,
        "probabilities": json.dumps(prediction.probabilities),
        "model_name": prediction.model_name,
        "received_at": prediction.received_at.isoformat(),
        "image_uri": study.image_uri,
        "content_type": study.content_type,
        "sha256": study.sha256,
    }
    head = [prediction.study_id, repr(prediction.priority), prediction.model_version]
    return [*head, prediction.scored_at.isoformat(), *(item for pair in fields.items() for item in pair)]


def _text(value: bytes | str | int) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _outcome(reply: list[bytes | str | int]) -> WriteOutcome:
    changed, scored_at, priority = reply
    return WriteOutcome(
        changed=bool(changed),
        scored_at=datetime.fromisoformat(_text(scored_at)),
        priority=float(_text(priority)),
    )
