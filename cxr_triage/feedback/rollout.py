"""The processors' online-evaluation document (feedback store state ``rollout``), shared with its readers.

The stream processors write it; ``cxr-triage feedback stats`` and ``cxr-triage model status`` read it without
asking a running processor. It lives here, beside the store, because readers in other services must not
import the processors.

- ``current``: the rollout the processors judge, as the operators' decisions on ``cxr.model-decisions.v1``
  set it (``shadow_started`` / ``canary_started``), until an operator ``stopped`` it or the policy promoted or
  rolled it back. Only a study the challenger scored at or after ``started_at`` counts for it.
- ``challengers``: per challenger version, the latest numbers and the policy's action of its current (or last)
  rollout; a new start of the version clears them.
- ``decisions``: the final (promote / rollback) decision per challenger version, and whether Kafka has it.
- ``applied_at``: when the newest operator decision applied was made: an older one read later (the decisions
  topic is keyed by challenger, so partitions interleave, and a replay reads it all again) changes nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from pydantic import BaseModel, ConfigDict

from cxr_triage.events import ModelDecisionEventV1, RolloutMode
from cxr_triage.feedback.store import FeedbackStore

ROLLOUT_STATE: Final = "rollout"


class RecordedDecision(BaseModel):
    model_config = ConfigDict(frozen=True)

    event: ModelDecisionEventV1
    # Whether Kafka acknowledged it: a decision recorded but not published is published after a restart.
    published: bool = False


class CurrentRollout(BaseModel):
    model_config = ConfigDict(frozen=True)

    mode: RolloutMode
    challenger_version: str
    champion_version: str
    fraction: float | None = None
    started_at: datetime
    decision_id: str


class RolloutState(BaseModel):
    model_config = ConfigDict(frozen=True)

    current: CurrentRollout | None = None
    applied_at: datetime | None = None
    decisions: dict[str, RecordedDecision] = {}
    challengers: dict[str, dict[str, Any]] = {}


def read_rollout(store: FeedbackStore) -> RolloutState:
    return RolloutState.model_validate(store.get_state(ROLLOUT_STATE) or {})
