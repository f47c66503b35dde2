"""The join's decisions, without Faust: one study's state in, the new state and what to publish out.

A study's ``JoinState`` (one Faust table row, key = study id) collects its study event, its latest serving
prediction, its shadow predictions (online evaluation: one per challenger version) and, per radiologist,
either the verdict waiting for the other two or the verdict already turned into feedback. Events may come in
any order; the functions here are pure so each order is unit-tested.

A shadow prediction never takes the serving prediction's place (the feedback example is the reading the
worklist showed); it rides along in the example's ``shadow`` so both models are judged on the same verdict.
A shadow arriving after the example was published re-publishes it with the shadow added (same verdict id:
the store merges it into the row, no new ``seq``).

Per radiologist only the latest decision counts: an amendment replaces the earlier verdict (a new feedback
event under the same key), while an older verdict seen again (a replay after an amendment) changes nothing
and publishes nothing. The verdict already joined seen again publishes its feedback again: it is the replay
of an event whose feedback may never have reached Kafka (the table write acked, the feedback not, the source
offset uncommitted), and the feedback store ignores a verdict id it holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from cxr_triage import topics
from cxr_triage.events import (
    DeadLetterEventV1,
    FeedbackEventV1,
    PredictionEventV1,
    StudyEventV1,
    VerdictEventV1,
)


class WaitingVerdict(BaseModel):
    model_config = ConfigDict(frozen=True)

    verdict: VerdictEventV1
    # Processing time (epoch seconds) the verdict was first seen unmatched: the wait runs from there.
    since: float


class JoinedVerdict(BaseModel):
    model_config = ConfigDict(frozen=True)

    verdict_id: str
    decided_at: datetime
    # The verdict itself (without its note), to re-publish the example when a shadow prediction comes later.
    # None in states written before online evaluation: such an example is not re-published.
    verdict: VerdictEventV1 | None = None


class JoinState(BaseModel):
    """Everything the join knows about one study (a Faust table value, JSON)."""

    model_config = ConfigDict(frozen=True)

    study: StudyEventV1 | None = None
    prediction: PredictionEventV1 | None = None
    # Shadow predictions by model version (the newest scoring of each).
    shadow: dict[str, PredictionEventV1] = {}
    waiting: dict[str, WaitingVerdict] = {}
    joined: dict[str, JoinedVerdict] = {}
    # The drift monitor's summary of the input image, kept until the prediction gives it a priority.
    input_sample: dict[str, object] | None = None
    # Processing time (epoch seconds) of the last change, set by the agent: a settled study leaves the table
    # CXR_JOIN_SETTLED_TTL_S after it.
    updated_at: float | None = None


@dataclass(frozen=True)
class Step:
    state: JoinState
    feedback: list[FeedbackEventV1] = field(default_factory=list)
    dead_letters: list[DeadLetterEventV1] = field(default_factory=list)


def _is_newer(verdict: VerdictEventV1, than: JoinedVerdict | WaitingVerdict | None) -> bool:
    """Whether ``verdict`` replaces what is known of that radiologist's reading (None: nothing known)."""
    if than is None:
        return True
    known_id, known_at = (
        (than.verdict.verdict_id, than.verdict.decided_at)
        if isinstance(than, WaitingVerdict)
        else (than.verdict_id, than.decided_at)
    )
    return verdict.verdict_id != known_id and verdict.decided_at >= known_at


def _joined(verdict: VerdictEventV1) -> JoinedVerdict:
    return JoinedVerdict(
        verdict_id=verdict.verdict_id,
        decided_at=verdict.decided_at,
        verdict=verdict.model_copy(update={"note": None}),
    )


def feedback_of(
    study: StudyEventV1,
    prediction: PredictionEventV1,
    verdict: VerdictEventV1,
    shadow: dict[str, PredictionEventV1] | None = None,
) -> FeedbackEventV1:
    # The serving version scored in shadow too (a worker mid-switch) is no second opinion: left out.
    paired = {v: p for v, p in sorted((shadow or {}).items()) if v != prediction.model_version}
    return FeedbackEventV1(
        study_id=study.study_id,
        radiologist=verdict.radiologist,
        verdict_id=verdict.verdict_id,
        kind=verdict.kind,
        image_uri=study.image_uri,
        sha256=study.sha256,
        content_type=study.content_type,
        source=study.source,
        labels=verdict.labels,
        uncertain=verdict.uncertain,
        agreed_with_model=verdict.agreed_with_model,
        model_name=prediction.model_name,
        model_version=prediction.model_version,
        probabilities=prediction.probabilities,
        priority=prediction.priority,
        tier=prediction.tier,
        threshold=prediction.threshold,
        received_at=study.received_at,
        scored_at=prediction.scored_at,
        claimed_at=verdict.claimed_at,
        decided_at=verdict.decided_at,
        arm=prediction.arm,
        shadow=paired,
    )


def _release(state: JoinState) -> Step:
    """Turn every waiting verdict into feedback once the study and its prediction are both known."""
    if state.study is None or state.prediction is None or not state.waiting:
        return Step(state)
    feedback = [
        feedback_of(state.study, state.prediction, w.verdict, state.shadow) for w in state.waiting.values()
    ]
    joined = dict(state.joined)
    for radiologist, w in state.waiting.items():
        joined[radiologist] = _joined(w.verdict)
    return Step(state.model_copy(update={"waiting": {}, "joined": joined}), feedback=feedback)


def _joined_again(state: JoinState) -> list[FeedbackEventV1]:
    """The feedback of every verdict already joined: what a replayed source event publishes again."""
    if state.study is None or state.prediction is None:
        return []
    return [
        feedback_of(state.study, state.prediction, j.verdict, state.shadow)
        for j in state.joined.values()
        if j.verdict is not None
    ]


def on_study(state: JoinState, study: StudyEventV1) -> Step:
    if state.study == study and state.joined:
        # A replay of the event that released the joined verdicts: their feedback again (it may be the one that
        # never reached Kafka when the process died after the table write).
        return Step(state, feedback=_joined_again(state))
    return _release(state.model_copy(update={"study": study}))


def on_prediction(state: JoinState, prediction: PredictionEventV1) -> Step:
    if prediction.role == "shadow":
        return on_shadow(state, prediction)
    # Among serving predictions the latest scoring wins (a re-score by a new version); feedback already published keeps the
    # prediction it was joined with: the verdict judged that one.
    if state.prediction is not None and prediction.scored_at < state.prediction.scored_at:
        return Step(state)
    if state.prediction == prediction and state.joined:
        return Step(state, feedback=_joined_again(state))  # a replay: as for a replayed study event
    return _release(state.model_copy(update={"prediction": prediction}))


def on_shadow(state: JoinState, prediction: PredictionEventV1) -> Step:
    """Record a shadow prediction; re-publish the study's examples already joined, now with it."""
    known = state.shadow.get(prediction.model_version)
    if known is not None and prediction.scored_at <= known.scored_at:
        return Step(state)  # a replay, or an older scoring of that version
    state = state.model_copy(update={"shadow": {**state.shadow, prediction.model_version: prediction}})
    step = _release(state)
    if state.study is None or state.prediction is None:
        return step
    released = {f.radiologist for f in step.feedback}
    again = [
        feedback_of(state.study, state.prediction, j.verdict, state.shadow)
        for radiologist, j in state.joined.items()
        if j.verdict is not None and radiologist not in released
    ]
    return Step(step.state, feedback=step.feedback + again, dead_letters=step.dead_letters)


def on_verdict(state: JoinState, verdict: VerdictEventV1, *, now: float) -> Step:
    radiologist = verdict.radiologist
    joined = state.joined.get(radiologist)
    if (
        joined is not None
        and joined.verdict_id == verdict.verdict_id
        and state.study is not None
        and state.prediction is not None
    ):
        # A replay of the joined verdict: its feedback again, in case the first one was lost in a crash.
        return Step(state, feedback=[feedback_of(state.study, state.prediction, verdict, state.shadow)])
    known = state.waiting.get(radiologist) or joined
    if not _is_newer(verdict, known):
        return Step(state)
    previous = state.waiting.get(radiologist)
    since = previous.since if previous is not None else now
    waiting = {**state.waiting, radiologist: WaitingVerdict(verdict=verdict, since=since)}
    return _release(state.model_copy(update={"waiting": waiting}))


def settled(state: JoinState) -> bool:
    """Whether the study is done with: study, prediction and a joined verdict known, nothing waiting.

    A state holding shadow predictions only (a shadow that came after its study was pruned) counts as settled
    too, so it leaves the table after the TTL instead of staying for ever.
    """
    if (
        state.shadow
        and state.study is None
        and state.prediction is None
        and not state.waiting
        and not state.joined
        and state.input_sample is None
    ):
        return True
    return (
        state.study is not None
        and state.prediction is not None
        and bool(state.joined)
        and not state.waiting
        and state.input_sample is None
    )


def drop_waiting(state: JoinState, dead: list[DeadLetterEventV1]) -> JoinState:
    """``state`` without the waiting verdicts that ``dead`` dead-lettered (those still waiting unchanged)."""
    gone = {
        (v.radiologist, v.verdict_id)
        for v in (VerdictEventV1.model_validate_json(d.original or "") for d in dead)
    }
    waiting = {r: w for r, w in state.waiting.items() if (r, w.verdict.verdict_id) not in gone}
    return state if len(waiting) == len(state.waiting) else state.model_copy(update={"waiting": waiting})


def expire(state: JoinState, *, now: float, wait_s: float, settled_ttl_s: float | None = None) -> Step:
    """Dead-letter the verdicts that waited ``wait_s`` for their study or prediction; keep the others."""
    expired = {r: w for r, w in state.waiting.items() if now - w.since >= wait_s}
    if not expired:
        return Step(state)
    missing = [
        name for name, known in (("study", state.study), ("prediction", state.prediction)) if not known
    ]
    reason = (
        f"verdict unmatched after {wait_s:g} s: no {' and no '.join(missing)} event for its study"
        if missing
        else f"verdict unmatched after {wait_s:g} s"
    )
    if len(missing) == 2 and settled_ttl_s is not None:
        # Indistinguishable here from a study the join settled and then forgot (CXR_JOIN_SETTLED_TTL_S).
        reason += (
            f" (unknown study, or one settled and pruned from the join more than {settled_ttl_s:g} s"
            " after its last event: a late amendment)"
        )
    dead = [
        DeadLetterEventV1(
            stage="processor",
            reason=reason,
            error_type="UnmatchedVerdict",
            study_id=w.verdict.study_id,
            original=w.verdict.model_dump_json(),
            original_topic=topics.VERDICTS,
        )
        for w in expired.values()
    ]
    waiting = {r: w for r, w in state.waiting.items() if r not in expired}
    return Step(state.model_copy(update={"waiting": waiting}), dead_letters=dead)


def waiting_count(state: JoinState) -> int:
    return len(state.waiting)
