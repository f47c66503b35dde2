"""The retrain trigger's decisions, without Kafka: when to ask for a challenger, and what a result settles.

Rules, checked in this order (the first that holds names the request's reason):

1. ``new_labels``: labelled examples stored since the champion's data window ended >= ``retrain_min_labels``;
2. ``auroc_floor`` / ``sensitivity_floor``: the serving version's sliding-window AUROC (abnormal vs normal) or
   sensitivity at its threshold is below the floor, once the window holds ``floor_min_examples``;
3. ``drift``: the last drift report raised an alert.

At most one request is outstanding: it is recorded (feedback store state) before it is published, and a
restart re-publishes a recorded, unpublished one unchanged. Its id is a hash of (champion, data window start,
reason, attempt), so the same decision always carries the same id. After a rejected challenger no rule fires
until ``min_labels`` more examples arrived: the same data would only give the same challenger. After a failed
run (an error: nothing was learnt about the data) the rules apply again after a backoff that doubles with each
consecutive failure (``failure_backoff_s`` up to ``failure_backoff_max_s``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict

from cxr_triage.events import MetricsEventV1, TrainingReason, TrainingRequestEventV1, TrainingResultEventV1


class TriggerPolicy(BaseModel):
    model_config = ConfigDict(frozen=True)

    min_labels: int
    auroc_floor: float
    sensitivity_floor: float
    floor_min_examples: int
    on_drift: bool = True
    failure_backoff_s: float = 300.0
    failure_backoff_max_s: float = 6 * 3600.0


class TriggerState(BaseModel):
    """Persisted by the processors (feedback store state ``trigger``) so a restart keeps the outstanding request."""

    model_config = ConfigDict(frozen=True)

    champion_version: str | None = None
    # The champion was trained on examples with seq <= this: newer ones count as new labels.
    champion_up_to_seq: int = 0
    pending: TrainingRequestEventV1 | None = None
    # Whether the pending request reached Kafka (a crash between deciding and publishing re-publishes it).
    published: bool = False
    handled: int = 0
    # After a challenger was rejected, retrying on the same data would only repeat that: no request until
    # min_labels more examples arrived after the rejected request's window.
    cooldown_after_seq: int | None = None
    last_outcome: Literal["promoted", "rejected", "failed"] | None = None
    # After a failed run: no request before this processing time (epoch seconds), then the rules as usual.
    retry_after: float | None = None
    consecutive_failures: int = 0


def request_id(champion_version: str | None, after_seq: int, reason: TrainingReason, attempt: int) -> str:
    key = f"{champion_version or '-'}|{after_seq}|{reason}|{attempt}"
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"tr-{digest[:24]}"


def _reason(
    *,
    labelled_since: int,
    metrics: MetricsEventV1 | None,
    drift_alert: bool,
    policy: TriggerPolicy,
) -> tuple[TrainingReason, str] | None:
    if labelled_since >= policy.min_labels:
        return (
            "new_labels",
            f"{labelled_since} labelled examples since the champion's data (>= {policy.min_labels})",
        )
    if metrics is not None and metrics.examples >= policy.floor_min_examples:
        if metrics.auroc_abnormal is not None and metrics.auroc_abnormal < policy.auroc_floor:
            return (
                "auroc_floor",
                f"online AUROC {metrics.auroc_abnormal:.3f} < {policy.auroc_floor} over {metrics.examples} examples",
            )
        if metrics.sensitivity is not None and metrics.sensitivity < policy.sensitivity_floor:
            return (
                "sensitivity_floor",
                f"online sensitivity {metrics.sensitivity:.3f} < {policy.sensitivity_floor}"
                f" over {metrics.examples} examples",
            )
    if drift_alert and policy.on_drift:
        return "drift", "the last drift report raised an alert"
    return None


def decide(
    state: TriggerState,
    *,
    total: int,
    max_seq: int,
    count_after: Callable[[int], int],
    metrics: MetricsEventV1 | None,
    drift_alert: bool,
    policy: TriggerPolicy,
    now: float,
) -> TriggerState:
    """The state after checking the rules; a new ``pending`` (unpublished) request when one fires.

    ``count_after(seq)`` is the number of stored examples with a greater ``seq`` (the feedback store's count);
    ``now`` is processing time (epoch seconds), for the backoff after a failed run.
    """
    if state.pending is not None:
        return state
    if state.retry_after is not None and now < state.retry_after:
        return state
    if state.cooldown_after_seq is not None and count_after(state.cooldown_after_seq) < policy.min_labels:
        return state
    labelled_since = count_after(state.champion_up_to_seq)
    found = _reason(labelled_since=labelled_since, metrics=metrics, drift_alert=drift_alert, policy=policy)
    if found is None:
        return state
    reason, detail = found
    after_seq = state.champion_up_to_seq
    request = TrainingRequestEventV1(
        request_id=request_id(state.champion_version, after_seq, reason, state.handled),
        reason=reason,
        detail=detail,
        champion_version=state.champion_version,
        labelled_since_champion=labelled_since,
        total_examples=total,
        after_seq=after_seq,
        up_to_seq=max(max_seq, after_seq),
    )
    return state.model_copy(update={"pending": request, "published": False})


def settle(
    state: TriggerState, result: TrainingResultEventV1, *, now: float, policy: TriggerPolicy
) -> TriggerState:
    """Clear the pending request this result answers; a promotion moves the champion and its data window.

    Rejected: a cooldown until ``min_labels`` new examples. Failed: a retry after the backoff (``now`` is
    processing time, epoch seconds), the data window unchanged.
    """
    if state.pending is None or result.request_id != state.pending.request_id:
        return state  # a result of an older request, replayed: already settled
    update: dict[str, object] = {
        "pending": None,
        "published": False,
        "handled": state.handled + 1,
        "last_outcome": result.outcome,
        "cooldown_after_seq": None,
        "retry_after": None,
        "consecutive_failures": 0,
    }
    if result.outcome == "promoted":
        update["champion_version"] = result.serving_version or result.challenger_version
        update["champion_up_to_seq"] = max(result.up_to_seq, state.champion_up_to_seq)
    elif result.outcome == "rejected":
        update["cooldown_after_seq"] = state.pending.up_to_seq
    else:
        failures = state.consecutive_failures + 1
        backoff = min(policy.failure_backoff_s * 2 ** (failures - 1), policy.failure_backoff_max_s)
        update["consecutive_failures"] = failures
        update["retry_after"] = now + backoff
        # A cooldown set by an earlier rejection still holds: the failure taught nothing new about the data.
        update["cooldown_after_seq"] = state.cooldown_after_seq
    return state.model_copy(update=update)


def observe_serving(state: TriggerState, model_version: str) -> TriggerState:
    """Adopt the serving version as champion when none is known yet (a fresh system's first model)."""
    if state.champion_version is None:
        return state.model_copy(update={"champion_version": model_version})
    return state
