"""Redis key layout of the worklist projection (rebuildable from Kafka topics).

``{prefix}:study:{id}``  hash: study_id, priority, probabilities (JSON object in label order), model_name,
                         model_version, received_at, scored_at (ISO 8601 UTC), image_uri, content_type, sha256,
                         tier (SLA tier, by the scoring model's thresholds); written by
                         ``cxr_triage.worklist.study``
``{prefix}:worklist``    sorted set: member = study id, score = priority (higher is read first)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RedisKeys:
    prefix: str = "cxr"

    def study(self, study_id: str) -> str:
        return f"{self.prefix}:study:{study_id}"

    @property
    def worklist(self) -> str:
        return f"{self.prefix}:worklist"
