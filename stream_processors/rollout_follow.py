"""Which rollout the processors judge: the operators' decisions on ``cxr.model-decisions.v1`` decide it.

Inferring it from predictions judged whatever had scored studies, a stopped challenger included, and knew no
fraction. Here a start (``shadow_started`` / ``canary_started``) makes its challenger the current one from the
decision's time; ``stopped`` ends it, and so does the policy's own promote or rollback. Plain functions on the
state document, so a replay of the topic from the beginning ends in the same state.
"""

from __future__ import annotations

from datetime import datetime

from cxr_triage.events import FeedbackEventV1, ModelDecisionEventV1
from cxr_triage.feedback.rollout import CurrentRollout, RolloutState

_STARTS = frozenset({"shadow_started", "canary_started"})
_POLICY_ENDS = frozenset({"promote", "rollback"})


def apply_decision(state: RolloutState, event: ModelDecisionEventV1) -> RolloutState:
    """``state`` after ``event``; the same object when the event changes nothing."""
    current = state.current
    if event.decided_by == "policy":
        ends = (
            event.action in _POLICY_ENDS
            and current is not None
            and current.challenger_version == event.challenger_version
            and event.decided_at >= current.started_at
        )
        return state.model_copy(update={"current": None}) if ends else state
    if state.applied_at is not None and event.decided_at < state.applied_at:
        return state  # an older decision read late: a newer one is in force already
    if current is not None and current.decision_id == event.decision_id:
        return state  # the same start again (a replay)
    if event.action in _STARTS:
        started = CurrentRollout(
            mode=event.mode,
            challenger_version=event.challenger_version,
            champion_version=event.champion_version,
            fraction=event.fraction,
            started_at=event.decided_at,
            decision_id=event.decision_id,
        )
        # A fresh start is judged on its own studies: the numbers of an earlier rollout of the version go.
        challengers = {v: c for v, c in state.challengers.items() if v != event.challenger_version}
        return state.model_copy(
            update={"current": started, "applied_at": event.decided_at, "challengers": challengers}
        )
    if event.action == "stopped":
        ends = current is not None and current.challenger_version == event.challenger_version
        return state.model_copy(update={"current": None if ends else current, "applied_at": event.decided_at})
    return state


def challenger_scored_at(example: FeedbackEventV1, challenger: str) -> datetime | None:
    """When ``challenger`` scored the example's study (served on the canary arm, or in shadow)."""
    if example.model_version == challenger:
        return example.scored_at
    shadow = example.shadow.get(challenger)
    return None if shadow is None else shadow.scored_at
