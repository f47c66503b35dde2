"""Prometheus metrics of the stream processors, in a registry of their own, served at ``/metrics``.

Labels are model versions, windows, findings, tiers and drift features: never a study id.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from cxr_triage.events import DriftReportV1, MetricsEventV1
from stream_processors.paired_metrics import ArmMetrics, PairedMetrics

_NAN = float("nan")


def _value(value: float | None) -> float:
    return _NAN if value is None else value


class ProcessorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.feedback_published = Counter(
            "cxr_processors_feedback_published", "Feedback events the join published", registry=r
        )
        self.feedback_stored = Counter(
            "cxr_processors_feedback_stored",
            "Feedback events that changed the store (replays excluded)",
            registry=r,
        )
        self.feedback_examples = Gauge(
            "cxr_processors_feedback_examples",
            "Examples in the feedback store",
            ["model_version"],
            registry=r,
        )
        self.unmatched_waiting = Gauge(
            "cxr_processors_unmatched_verdicts", "Verdicts waiting for their study or prediction", registry=r
        )
        self.join_settled = Gauge(
            "cxr_processors_join_settled_studies",
            "Settled studies held in the join table until their TTL",
            registry=r,
        )
        self.join_pruned = Counter(
            "cxr_processors_join_pruned",
            "Settled studies dropped from the join table after their TTL",
            registry=r,
        )
        self.dead_lettered = Counter(
            "cxr_processors_dead_lettered", "Events sent to the DLQ by the processors", ["reason"], registry=r
        )
        self.training_requests = Counter(
            "cxr_processors_training_requests", "Training requests published", ["reason"], registry=r
        )
        self.trigger_checks = Counter(
            "cxr_processors_trigger_checks",
            "Retrain trigger evaluations completed (published included)",
            registry=r,
        )
        self.training_pending = Gauge(
            "cxr_processors_training_request_pending",
            "1 while a training request awaits its result",
            registry=r,
        )
        self.online_examples = Gauge(
            "cxr_online_examples", "Examples in the metrics window", ["model_version", "window"], registry=r
        )
        self.online_auroc = Gauge(
            "cxr_online_auroc",
            "Abnormal-vs-normal AUROC on radiologists' reads",
            ["model_version", "window"],
            registry=r,
        )
        self.online_finding_auroc = Gauge(
            "cxr_online_finding_auroc",
            "Per-finding AUROC where both classes are present",
            ["model_version", "window", "finding"],
            registry=r,
        )
        self.online_sensitivity = Gauge(
            "cxr_online_sensitivity",
            "Sensitivity at the served threshold",
            ["model_version", "window"],
            registry=r,
        )
        self.online_specificity = Gauge(
            "cxr_online_specificity",
            "Specificity at the served threshold",
            ["model_version", "window"],
            registry=r,
        )
        self.online_agreement = Gauge(
            "cxr_online_agreement_rate",
            "Share of verdicts that agreed with the model",
            ["model_version", "window"],
            registry=r,
        )
        self.online_time_to_read = Gauge(
            "cxr_online_time_to_read_seconds",
            "Median seconds from arrival to decision",
            ["model_version", "window", "tier"],
            registry=r,
        )
        self.drift_psi = Gauge(
            "cxr_drift_psi",
            "Population stability index against the reference",
            ["model_version", "feature"],
            registry=r,
        )
        self.drift_ks = Gauge(
            "cxr_drift_ks_statistic",
            "Kolmogorov-Smirnov statistic against the reference",
            ["model_version", "feature"],
            registry=r,
        )
        self.drift_alert = Gauge(
            "cxr_drift_alert", "1 when the last drift report alerted", ["model_version"], registry=r
        )

        # Online evaluation: labelled by model version, role (champion / challenger) or arm; never a study.
        self.rollout_paired = Gauge(
            "cxr_rollout_paired_studies",
            "Verdicted studies both the champion and the challenger scored",
            ["champion_version", "challenger_version", "mode"],
            registry=r,
        )
        self.rollout_auroc = Gauge(
            "cxr_rollout_paired_auroc",
            "Abnormal-vs-normal AUROC on the paired studies",
            ["model_version", "role"],
            registry=r,
        )
        self.rollout_auroc_difference = Gauge(
            "cxr_rollout_auroc_difference",
            "AUROC(challenger) - AUROC(champion) on the paired studies, with its bootstrap CI bounds",
            ["challenger_version", "bound"],
            registry=r,
        )
        self.rollout_sensitivity = Gauge(
            "cxr_rollout_paired_sensitivity",
            "Sensitivity at the model's own threshold on the paired studies",
            ["model_version", "role"],
            registry=r,
        )
        self.rollout_specificity = Gauge(
            "cxr_rollout_paired_specificity",
            "Specificity at the model's own threshold on the paired studies",
            ["model_version", "role"],
            registry=r,
        )
        self.rollout_latency = Gauge(
            "cxr_rollout_scoring_latency_seconds",
            "Seconds from arrival to scoring on the paired studies",
            ["model_version", "role", "quantile"],
            registry=r,
        )
        self.rollout_arm_examples = Gauge(
            "cxr_rollout_arm_examples",
            "Verdicted studies each arm's model ordered",
            ["model_version", "arm"],
            registry=r,
        )
        self.rollout_arm_sensitivity = Gauge(
            "cxr_rollout_arm_sensitivity",
            "Sensitivity on the studies each arm's model ordered",
            ["model_version", "arm"],
            registry=r,
        )
        self.rollout_arm_time_to_read = Gauge(
            "cxr_rollout_arm_time_to_read_seconds",
            "Median seconds from arrival to decision on the studies each arm's model ordered",
            ["model_version", "arm"],
            registry=r,
        )
        self.rollout_decision = Gauge(
            "cxr_rollout_decision",
            "1 for the policy's current action on the challenger",
            ["challenger_version", "action"],
            registry=r,
        )
        self.rollout_decisions = Counter(
            "cxr_rollout_decisions",
            "Final decisions published on cxr.model-decisions.v1",
            ["action"],
            registry=r,
        )

    def observe_paired(self, paired: PairedMetrics, *, mode: str) -> None:
        champion, challenger = paired.champion_version, paired.challenger_version
        self.rollout_paired.labels(champion_version=champion, challenger_version=challenger, mode=mode).set(
            paired.paired
        )
        for role, version, auroc, sensitivity, specificity, p50, p95 in (
            (
                "champion",
                champion,
                paired.auroc_champion,
                paired.sensitivity_champion,
                paired.specificity_champion,
                paired.latency_p50_champion_s,
                paired.latency_p95_champion_s,
            ),
            (
                "challenger",
                challenger,
                paired.auroc_challenger,
                paired.sensitivity_challenger,
                paired.specificity_challenger,
                paired.latency_p50_challenger_s,
                paired.latency_p95_challenger_s,
            ),
        ):
            labels = {"model_version": version, "role": role}
            self.rollout_auroc.labels(**labels).set(_value(auroc))
            self.rollout_sensitivity.labels(**labels).set(_value(sensitivity))
            self.rollout_specificity.labels(**labels).set(_value(specificity))
            self.rollout_latency.labels(quantile="0.5", **labels).set(_value(p50))
            self.rollout_latency.labels(quantile="0.95", **labels).set(_value(p95))
        for bound, value in (
            ("estimate", paired.auroc_difference),
            ("ci_low", paired.difference_ci_low),
            ("ci_high", paired.difference_ci_high),
        ):
            self.rollout_auroc_difference.labels(challenger_version=challenger, bound=bound).set(
                _value(value)
            )

    def observe_arm(self, arm: ArmMetrics) -> None:
        labels = {"model_version": arm.model_version, "arm": arm.arm}
        self.rollout_arm_examples.labels(**labels).set(arm.examples)
        self.rollout_arm_sensitivity.labels(**labels).set(_value(arm.sensitivity))
        self.rollout_arm_time_to_read.labels(**labels).set(_value(arm.time_to_read_p50_s))

    def observe_decision(self, challenger: str, action: str) -> None:
        for known in ("promote", "rollback", "keep_waiting"):
            self.rollout_decision.labels(challenger_version=challenger, action=known).set(
                1 if known == action else 0
            )

    def observe_metrics(self, event: MetricsEventV1) -> None:
        labels = {"model_version": event.model_version, "window": event.window}
        self.online_examples.labels(**labels).set(event.examples)
        for gauge, value in (
            (self.online_auroc, event.auroc_abnormal),
            (self.online_sensitivity, event.sensitivity),
            (self.online_specificity, event.specificity),
            (self.online_agreement, event.agreement_rate),
        ):
            gauge.labels(**labels).set(_NAN if value is None else value)
        for finding, auroc in event.auroc_per_finding.items():
            self.online_finding_auroc.labels(finding=finding, **labels).set(auroc)
        for tier, seconds in event.time_to_read_s.items():
            self.online_time_to_read.labels(tier=tier, **labels).set(seconds)

    def observe_drift(self, report: DriftReportV1) -> None:
        for score in report.scores:
            labels = {"model_version": report.model_version, "feature": score.feature}
            self.drift_psi.labels(**labels).set(_NAN if score.psi is None else score.psi)
            self.drift_ks.labels(**labels).set(_NAN if score.ks_statistic is None else score.ks_statistic)
        self.drift_alert.labels(model_version=report.model_version).set(1 if report.alert else 0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
