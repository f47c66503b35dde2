"""Prometheus metrics of the stream processors, in a registry of their own, served at ``/metrics``.

Labels are model versions, windows, findings, tiers and drift features: never a study id.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from cxr_triage.events import DriftReportV1, MetricsEventV1

_NAN = float("nan")


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
