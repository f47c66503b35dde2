"""What the processors do with the feedback store: the sink, online metrics, drift windows and the trigger.

Kafka stays out of here (``agents`` publishes what these methods return), and so does asyncio: every method
is plain blocking code on SQLite that the agents run in a thread. State documents that must survive a
restart (the trigger, the drift windows, the serving version) live in the store's ``state`` table, which is
also what ``cxr-triage feedback stats`` reads.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime

from cxr_triage.events import (
    DriftReportV1,
    FeedbackEventV1,
    MetricsEventV1,
    ModelDecisionEventV1,
    PredictionEventV1,
    StudyEventV1,
    TrainingRequestEventV1,
    TrainingResultEventV1,
)
from cxr_triage.feedback.rollout import (
    ROLLOUT_STATE,
    CurrentRollout,
    RecordedDecision,
    RolloutState,
    read_rollout,
)
from cxr_triage.feedback.store import FeedbackStore
from cxr_triage.image_store import ImageStore, ImageStoreError
from cxr_triage.imaging import ImageRejected, decode_grayscale
from stream_processors import rollout_policy
from stream_processors.config import ProcessorSettings
from stream_processors.drift import DriftThresholds, InputSample, drift_report, input_sample
from stream_processors.drift_windows import DriftWindows, add_sample, reported
from stream_processors.metrics import ProcessorMetrics
from stream_processors.online_metrics import compute_metrics
from stream_processors.paired_metrics import ArmMetrics, PairedMetrics, arm_metrics, paired_metrics
from stream_processors.rollout_follow import apply_decision, challenger_scored_at
from stream_processors.rollout_policy import RolloutPolicy, decision_event
from stream_processors.status import (
    DRIFT_STATE,
    DRIFT_WINDOWS_STATE,
    JOIN_STATE,
    SERVING_STATE,
    TRIGGER_STATE,
)
from stream_processors.trigger import TriggerPolicy, TriggerState, decide, observe_serving, settle

logger = logging.getLogger(__name__)


class Monitors:
    def __init__(
        self,
        settings: ProcessorSettings,
        *,
        store: FeedbackStore,
        metrics: ProcessorMetrics,
        images: ImageStore,
        drift_thresholds: DriftThresholds | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.images = images
        self.drift_thresholds = drift_thresholds or DriftThresholds()
        self.policy = TriggerPolicy(
            min_labels=settings.retrain_min_labels,
            auroc_floor=settings.auroc_floor,
            sensitivity_floor=settings.sensitivity_floor,
            floor_min_examples=settings.floor_min_examples,
            on_drift=settings.retrain_on_drift,
            failure_backoff_s=settings.retrain_failure_backoff_s,
            failure_backoff_max_s=settings.retrain_failure_backoff_max_s,
        )
        self.rollout_policy = RolloutPolicy(
            min_paired=settings.rollout_min_paired,
            min_per_class=settings.rollout_min_per_class,
            auroc_margin=settings.rollout_auroc_margin,
            sensitivity_floor=settings.rollout_sensitivity_floor,
            canary_min_examples=settings.canary_min_examples,
            canary_sensitivity_floor=settings.canary_sensitivity_floor,
            canary_latency_ceiling_s=settings.canary_latency_ceiling_s,
        )
        self._rollout_lock = threading.Lock()
        self._rollout_signature: object = None
        self._rollout_at = float("-inf")
        # The trigger's read-decide-record must not interleave between the sink and the timers' threads.
        self._trigger_lock = threading.Lock()
        self._drift_lock = threading.Lock()
        self._sliding: dict[str, MetricsEventV1] = {}
        # Per (version, window): the (count, max seq) of the version's rows when last computed, the event, and
        # when (monotonic). A version without new rows is not recomputed; since-promotion (every row of the
        # version) at most once per metrics interval.
        self._computed: dict[tuple[str, str], tuple[tuple[int, int], MetricsEventV1, float]] = {}
        self._drift = DriftWindows.model_validate(store.get_state(DRIFT_WINDOWS_STATE) or {})
        self._drift_dirty = False
        serving = store.get_state(SERVING_STATE) or {}
        self._serving: str | None = serving.get("model_version")
        self._serving_at: str | None = serving.get("scored_at")

    # -- the sink ------------------------------------------------------------------------------------------

    def store_feedback(self, event: FeedbackEventV1) -> bool:
        changed = self.store.upsert(event)
        if changed:
            self.metrics.feedback_stored.inc()
        return changed

    # -- the serving version -------------------------------------------------------------------------------

    def observe_prediction(self, prediction: PredictionEventV1) -> None:
        """Follow the version that scored the newest study: the one the floors and drift are about.

        Only the champion's serving predictions count: a shadow or a canary-ordered study is a challenger's.
        """
        if prediction.role != "serving" or prediction.arm != "champion":
            return
        scored_at = prediction.scored_at.isoformat()
        if self._serving == prediction.model_version or (
            self._serving_at is not None and datetime.fromisoformat(self._serving_at) > prediction.scored_at
        ):
            return
        self._serving, self._serving_at = prediction.model_version, scored_at
        self.store.put_state(SERVING_STATE, {"model_version": self._serving, "scored_at": scored_at})

    @property
    def serving_version(self) -> str | None:
        return self._serving

    # -- online metrics ------------------------------------------------------------------------------------

    def online_metrics(self, *, now: float | None = None) -> list[MetricsEventV1]:
        """Sliding-window and since-promotion metrics of the model versions whose rows changed.

        A version with no new row since its last computation is not read again (a retired version costs one
        GROUP BY row per tick); the serving version's last events are republished unchanged, so consumers of
        ``cxr.metrics.v1`` keep seeing it. Since-promotion reads every row of the version: it is recomputed
        at most once per ``metrics_interval_s``, the sliding window (``last=metrics_window`` rows) on every
        tick with new rows.
        """
        now = time.monotonic() if now is None else now
        events: list[MetricsEventV1] = []
        for version, (n, max_seq) in self.store.version_signatures().items():
            self.metrics.feedback_examples.labels(model_version=version).set(n)
            signature = (n, max_seq)
            for window in ("sliding", "since_promotion"):
                known = self._computed.get((version, window))
                fresh = known is not None and known[0] == signature
                throttled = (
                    window == "since_promotion"
                    and known is not None
                    and now - known[2] < self.settings.metrics_interval_s
                )
                if known is not None and (fresh or throttled):
                    if version == self._serving:
                        events.append(known[1])
                    continue
                last = self.settings.metrics_window if window == "sliding" else None
                rows = [row.event for row in self.store.scored_by(version, last=last)]
                if not rows:
                    continue
                event = compute_metrics(
                    rows,
                    model_name=rows[-1].model_name,
                    model_version=version,
                    window=window,
                )
                self.metrics.observe_metrics(event)
                events.append(event)
                self._computed[(version, window)] = (signature, event, now)
                if window == "sliding":
                    self._sliding[version] = event
        return events

    # -- online evaluation ---------------------------------------------------------------------------------

    def rollout_state(self) -> RolloutState:
        return read_rollout(self.store)

    def observe_decision(self, event: ModelDecisionEventV1) -> bool:
        """Follow an operator's (or the policy's) decision on ``cxr.model-decisions.v1``; True if it changed
        the rollout judged."""
        with self._rollout_lock:
            state = self.rollout_state()
            updated = apply_decision(state, event)
            if updated == state:
                return False
            self.store.put_state(ROLLOUT_STATE, updated.model_dump(mode="json"))
            self._rollout_signature = (
                None  # judge the new rollout on the next tick, not a metrics interval on
            )
            self._rollout_at = float("-inf")
        current = updated.current
        logger.info(
            "rollout followed",
            extra={
                "action": event.action,
                "decided_by": event.decided_by,
                "challenger_version": event.challenger_version,
                "judged": None if current is None else current.challenger_version,
            },
        )
        return True

    def rollout(self) -> list[ModelDecisionEventV1]:
        """Decisions to publish: a new final one on the current challenger (recorded first), and any recorded
        but never published.

        Only the rollout the operators started is judged (``observe_decision``), on the studies its challenger
        scored since the start; the paired metrics are recomputed only when the store's scores changed (or
        the rollout did).
        """
        with self._rollout_lock:
            state = self.rollout_state()
            unpublished = [d.event for d in state.decisions.values() if not d.published]
            current = state.current
            if current is None or current.mode == "none":
                return unpublished
            challenger = current.challenger_version
            champion = current.champion_version or self._serving
            if champion is None or challenger in state.decisions:
                return unpublished  # one final decision per challenger version
            signature = (current, champion, tuple(sorted(self.store.score_roles().items())))
            now = time.monotonic()
            if (
                signature == self._rollout_signature
                or now - self._rollout_at < self.settings.metrics_interval_s
            ):
                # Unchanged, or computed less than a metrics interval ago (the bootstrap is not free): the
                # metrics timer comes back within that interval.
                return unpublished
            self._rollout_signature, self._rollout_at = signature, now
            paired, canary = self._evaluate(champion, current)
            decision = rollout_policy.decide(paired, canary, policy=self.rollout_policy)
            self.metrics.observe_decision(challenger, decision.action)
            challengers = {
                **state.challengers,
                challenger: {
                    "mode": current.mode,
                    "champion_version": champion,
                    "fraction": current.fraction,
                    "started_at": current.started_at.isoformat(),
                    "action": decision.action,
                    "reason": decision.reason,
                    "paired": None if paired is None else paired.model_dump(mode="json"),
                    "canary": None if canary is None else canary.model_dump(mode="json"),
                },
            }
            decisions = dict(state.decisions)
            fresh: list[ModelDecisionEventV1] = []
            if decision.final:
                event = decision_event(
                    decision,
                    mode=current.mode,
                    champion=champion,
                    challenger=challenger,
                    fraction=current.fraction,
                    paired=paired,
                    canary=canary,
                )
                decisions[challenger] = RecordedDecision(event=event)
                fresh.append(event)
                current = None  # promoted or rolled back: nothing left to judge until the next start
                logger.warning(
                    "rollout decision",
                    extra={
                        "action": event.action,
                        "champion_version": champion,
                        "challenger_version": challenger,
                        "decision_id": event.decision_id,
                    },
                )
            updated = state.model_copy(
                update={"current": current, "decisions": decisions, "challengers": challengers}
            )
            if updated != state:
                self.store.put_state(ROLLOUT_STATE, updated.model_dump(mode="json"))
            return unpublished + fresh

    def _evaluate(
        self, champion: str, current: CurrentRollout
    ) -> tuple[PairedMetrics | None, ArmMetrics | None]:
        challenger, started = current.challenger_version, current.started_at

        def since_start(example: FeedbackEventV1) -> bool:
            scored = challenger_scored_at(example, challenger)
            return scored is not None and scored >= started

        rows = [
            row.event for row in self.store.scored_by_all((champion, challenger)) if since_start(row.event)
        ]
        paired = (
            paired_metrics(
                rows,
                champion=champion,
                challenger=challenger,
                confidence=self.settings.rollout_confidence,
                n_resamples=self.settings.rollout_bootstrap_resamples,
            )
            if rows
            else None
        )
        if paired is not None:
            self.metrics.observe_paired(paired, mode=current.mode)
        canary = None
        if current.mode == "canary":
            firsts = [
                first
                for (version, _, _), (_, first, _) in self.store.score_roles().items()
                if version == challenger
            ]
            since = min(firsts, default=1) - 1  # both arms over the canary's time: time-to-read like for like
            canary = arm_metrics(
                [
                    r.event
                    for r in self.store.served_on_arm("canary", after_seq=since)
                    if r.event.model_version == challenger and r.event.scored_at >= started
                ],
                model_version=challenger,
                arm="canary",
            )
            self.metrics.observe_arm(canary)
            self.metrics.observe_arm(
                arm_metrics(
                    [
                        r.event
                        for r in self.store.served_on_arm("champion", after_seq=since)
                        if r.event.model_version == champion and r.event.scored_at >= started
                    ],
                    model_version=champion,
                    arm="champion",
                )
            )
        return paired, canary

    def mark_decision_published(self, event: ModelDecisionEventV1) -> None:
        with self._rollout_lock:
            state = self.rollout_state()
            recorded = state.decisions.get(event.challenger_version)
            if recorded is None or recorded.event.decision_id != event.decision_id or recorded.published:
                return
            decisions = {
                **state.decisions,
                event.challenger_version: RecordedDecision(event=event, published=True),
            }
            self.store.put_state(
                ROLLOUT_STATE, state.model_copy(update={"decisions": decisions}).model_dump(mode="json")
            )
        self.metrics.rollout_decisions.labels(action=event.action).inc()

    # -- the retrain trigger -------------------------------------------------------------------------------

    def trigger_state(self) -> TriggerState:
        return TriggerState.model_validate(self.store.get_state(TRIGGER_STATE) or {})

    def _save_trigger(self, state: TriggerState) -> None:
        self.store.put_state(TRIGGER_STATE, state.model_dump(mode="json"))
        self.metrics.training_pending.set(1 if state.pending is not None else 0)

    def check_trigger(self) -> TrainingRequestEventV1 | None:
        """A request to publish now: a new one, or one recorded but not yet published (before a crash)."""
        with self._trigger_lock:
            state = self.trigger_state()
            if self._serving is not None:
                state = observe_serving(state, self._serving)
            if state.pending is not None:
                return None if state.published else state.pending
            drift = self.store.get_state(DRIFT_STATE) or {}
            # One snapshot of the store: the sink may store the next example while this check runs (a timer
            # and the sink both check), and counts read after it would not match the window's upper end.
            upper = self.store.max_seq()
            decided = decide(
                state,
                total=self.store.count(up_to_seq=upper),
                max_seq=upper,
                count_after=lambda seq: self.store.count(after_seq=seq, up_to_seq=upper),
                metrics=self._sliding.get(self._serving or ""),
                drift_alert=bool(drift.get("alert")) and drift.get("model_version") == self._serving,
                policy=self.policy,
                now=time.time(),
            )
            if decided != state:
                self._save_trigger(decided)
            return decided.pending

    def mark_published(self, request: TrainingRequestEventV1) -> None:
        with self._trigger_lock:
            state = self.trigger_state()
            if state.pending is not None and state.pending.request_id == request.request_id:
                self._save_trigger(state.model_copy(update={"published": True}))
        self.metrics.training_requests.labels(reason=request.reason).inc()
        logger.info(
            "training request published",
            extra={
                "request_id": request.request_id,
                "reason": request.reason,
                "up_to_seq": request.up_to_seq,
            },
        )

    def settle(self, result: TrainingResultEventV1) -> bool:
        """Record a training result; True if it answered the pending request."""
        with self._trigger_lock:
            state = self.trigger_state()
            settled = settle(state, result, now=time.time(), policy=self.policy)
            if settled == state:
                return False
            self._save_trigger(settled)
        logger.info(
            "training request handled",
            extra={
                "request_id": result.request_id,
                "outcome": result.outcome,
                "serving": result.serving_version,
            },
        )
        return True

    # -- drift -------------------------------------------------------------------------------------------

    def summarise_input(self, study: StudyEventV1) -> InputSample | None:
        """The drift summary of a study's image; None (logged, without the study) if it cannot be read."""
        try:
            data = self.images.get(study.image_uri)
            pixels = decode_grayscale(data, study.content_type)
        except (ImageStoreError, ImageRejected) as exc:
            logger.warning("input not summarised for drift", extra={"error_type": type(exc).__name__})
            return None
        # The view was read from the header at ingest (PA, AP, LATERAL, UNKNOWN for PNG / JPEG).
        return input_sample(pixels, view=study.primary_image.view, source=study.source)

    def add_drift_sample(self, sample: InputSample, prediction: PredictionEventV1) -> None:
        with self._drift_lock:
            before = self._drift.reference
            self._drift = add_sample(
                self._drift,
                study_id=prediction.study_id,
                sample=sample.model_dump(mode="json"),
                priority=prediction.priority,
                model_version=prediction.model_version,
                scored_at=prediction.scored_at,
                reference_size=self.settings.drift_reference_size,
                window_size=self.settings.drift_window_size,
            )
            self._drift_dirty = True
            if len(before) != len(self._drift.reference) and len(self._drift.reference) in (
                1,
                self.settings.drift_reference_size,
            ):
                # The reference is saved the moment it is complete: a restart must never rebuild it from
                # later (possibly drifted) inputs.
                self._save_drift_windows()

    def _save_drift_windows(self) -> None:
        self.store.put_state(DRIFT_WINDOWS_STATE, self._drift.model_dump(mode="json"))
        self._drift_dirty = False

    def drift_report(self) -> DriftReportV1 | None:
        """Compare the newest inputs with the reference, when both are full enough and something changed."""
        with self._drift_lock:
            windows = self._drift
            if self._drift_dirty:
                self._save_drift_windows()
            ready = (
                windows.model_version is not None
                and len(windows.reference) >= self.settings.drift_reference_size
                and len(windows.window) >= self.drift_thresholds.min_window
                and windows.added_since_report > 0
            )
            if not ready:
                return None
            self._drift = reported(windows)
        assert windows.model_version is not None
        report = drift_report(
            [InputSample.model_validate(s) for s in windows.reference],
            [InputSample.model_validate(s) for s in windows.window],
            reference_priorities=windows.reference_priorities,
            window_priorities=windows.window_priorities,
            model_version=windows.model_version,
            thresholds=self.drift_thresholds,
        )
        self.store.put_state(DRIFT_STATE, report.model_dump(mode="json"))
        self.metrics.observe_drift(report)
        log = logger.warning if report.alert else logger.info
        log(
            "drift report",
            extra={
                "model_version": report.model_version,
                "alert": report.alert,
                "flagged": [s.feature for s in report.scores if s.flagged],
            },
        )
        return report

    # -- the join's status -------------------------------------------------------------------------------

    def record_join_status(
        self, *, waiting: int, dead_lettered: int, settled: int = 0, pruned: int = 0
    ) -> None:
        self.metrics.unmatched_waiting.set(waiting)
        self.metrics.join_settled.set(settled)
        self.metrics.join_pruned.inc(pruned)
        previous = self.store.get_state(JOIN_STATE) or {}
        document = {
            "unmatched_waiting": waiting,
            "dead_lettered": int(previous.get("dead_lettered", 0)) + dead_lettered,
        }
        if document != previous:
            self.store.put_state(JOIN_STATE, document)
