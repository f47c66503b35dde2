"""``cxr-triage feedback stats``: what the store and the processors' state documents say, no processor asked."""

from __future__ import annotations

from typing import Any

from cxr_triage.feedback.rollout import ROLLOUT_STATE
from cxr_triage.feedback.store import FeedbackStore
from stream_processors.trigger import TriggerState

# Names of the processors' state documents in the feedback store.
TRIGGER_STATE = "trigger"
DRIFT_WINDOWS_STATE = "drift_windows"
DRIFT_STATE = "drift"
JOIN_STATE = "join"
SERVING_STATE = "serving"


def feedback_stats(store: FeedbackStore) -> dict[str, Any]:
    trigger = TriggerState.model_validate(store.get_state(TRIGGER_STATE) or {})
    join = store.get_state(JOIN_STATE) or {}
    drift = store.get_state(DRIFT_STATE) or {}
    serving = store.get_state(SERVING_STATE) or {}
    rollout = store.get_state(ROLLOUT_STATE) or {}
    return {
        "total": store.count(),
        "by_model_version": store.counts_by_model_version(),
        "unmatched_waiting": int(join.get("unmatched_waiting", 0)),
        "dead_lettered": int(join.get("dead_lettered", 0)),
        "serving_version": serving.get("model_version"),
        "training_requests": {
            "pending": 0 if trigger.pending is None else 1,
            "handled": trigger.handled,
            "pending_request": None if trigger.pending is None else trigger.pending.model_dump(mode="json"),
            "champion_version": trigger.champion_version,
            "champion_up_to_seq": trigger.champion_up_to_seq,
            "last_outcome": trigger.last_outcome,
        },
        # Online evaluation: per challenger its mode, latest paired numbers and the policy's action; the final
        # decisions as published on cxr.model-decisions.v1.
        "rollout": {
            "current": rollout.get("current"),
            "challengers": rollout.get("challengers", {}),
            "decisions": {
                version: {**recorded["event"], "published": recorded.get("published", False)}
                for version, recorded in rollout.get("decisions", {}).items()
            },
        },
        "drift": (
            {
                "model_version": drift.get("model_version"),
                "alert": bool(drift.get("alert")),
                "computed_at": drift.get("computed_at"),
                "scores": drift.get("scores", []),
            }
            if drift
            else {}
        ),
    }
