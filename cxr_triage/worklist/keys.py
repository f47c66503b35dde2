"""Key names of the worklist's reading state (the layout is in the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass

from cxr_triage.redis_keys import RedisKeys
from cxr_triage.sla import Tier


@dataclass(frozen=True)
class WorklistKeys(RedisKeys):
    """The projection's keys (``RedisKeys``) plus those of the unread index, claims and reads."""

    def unread(self, tier: Tier) -> str:
        return f"{self.prefix}:unread:{tier.value}"

    @property
    def claims(self) -> str:
        return f"{self.prefix}:claims"

    def lease(self, study_id: str) -> str:
        return f"{self.prefix}:lease:{study_id}"

    @property
    def read(self) -> str:
        return f"{self.prefix}:read"

    def cam(self, study_id: str) -> str:
        return f"{self.prefix}:cam:{study_id}"

    def image_cam(self, study_id: str, image_id: str) -> str:
        """One image's maps (the study's ``cam`` key holds its most urgent image's)."""
        return f"{self.prefix}:cam:{study_id}:{image_id}"

    def images(self, study_id: str) -> str:
        """The study's images (a hash: image id -> ``ImagePredictionV1`` JSON), written with its hash."""
        return f"{self.prefix}:images:{study_id}"

    def shadow(self, study_id: str) -> str:
        """The study's shadow prediction (JSON), written with its hash (``lua/upsert.lua``)."""
        return f"{self.prefix}:shadow:{study_id}"

    def verdicts(self, study_id: str) -> str:
        return f"{self.prefix}:verdicts:{study_id}"

    def verdict_lock(self, study_id: str, radiologist: str) -> str:
        return f"{self.prefix}:verdict-lock:{study_id}:{radiologist}"

    def verdict_times(self, study_id: str) -> str:
        return f"{self.prefix}:verdict-at:{study_id}"

    def verdict_keys(self, study_id: str, radiologist: str) -> str:
        return f"{self.prefix}:verdict-keys:{study_id}:{radiologist}"

    def verdict_pending(self, study_id: str, radiologist: str) -> str:
        return f"{self.prefix}:verdict-pending:{study_id}:{radiologist}"
