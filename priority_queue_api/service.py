"""Reading the worklist projection from Redis (written by the inference workers)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import cast

from redis.asyncio import Redis

from cxr_triage.labels import LABELS
from cxr_triage.redis_keys import RedisKeys
from priority_queue_api.models import StudyPublic, WorklistPublic


class StudyNotFound(LookupError):
    def __init__(self, study_id: str) -> None:
        super().__init__(f"study {study_id!r} is not on the worklist")
        self.study_id = study_id


def _study_from_hash(fields: Mapping[str, str]) -> StudyPublic:
    probabilities = json.loads(fields["probabilities"])
    return StudyPublic(
        study_id=fields["study_id"],
        priority=float(fields["priority"]),
        probabilities={label: float(probabilities[label]) for label in LABELS},
        model_name=fields["model_name"],
        model_version=fields["model_version"],
        received_at=datetime.fromisoformat(fields["received_at"]),
        scored_at=datetime.fromisoformat(fields["scored_at"]),
    )


async def fetch_worklist(*, redis: Redis, keys: RedisKeys, limit: int, offset: int) -> WorklistPublic:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zcard(keys.worklist)
        pipe.zrevrange(keys.worklist, offset, offset + limit - 1)
        total, study_ids = await pipe.execute()
    async with redis.pipeline(transaction=False) as pipe:
        for study_id in study_ids:
            pipe.hgetall(keys.study(study_id))
        records = await pipe.execute()
    # A study whose hash vanished between the two reads is skipped rather than failing the whole page.
    items = [_study_from_hash(fields) for fields in records if fields]
    return WorklistPublic(items=items, total=total, limit=limit, offset=offset)


async def fetch_study(*, redis: Redis, keys: RedisKeys, study_id: str) -> StudyPublic:
    fields = cast(dict[str, str], await redis.hgetall(keys.study(study_id)))
    if not fields:
        raise StudyNotFound(study_id)
    return _study_from_hash(fields)
