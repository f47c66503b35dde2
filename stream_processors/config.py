"""Settings of the stream processors: the shared ``Settings`` plus the feedback loop's own knobs (``CXR_*``)."""

from __future__ import annotations

from pydantic import Field, model_validator

from cxr_triage.settings import Settings


class ProcessorSettings(Settings):
    """Where the peers are (inherited) and how the join, metrics, drift and retrain trigger behave."""

    # One Kafka consumer group and one set of changelog topics per app id: a test (or a second
    # deployment on the same broker) takes its own id so its tables never mix with another's.
    processors_app_id: str = Field(default="cxr-processors", pattern=r"^[A-Za-z0-9._-]{1,100}$")

    # A verdict whose study or prediction has not arrived after this long goes to the DLQ.
    unmatched_verdict_wait_s: float = Field(default=600.0, gt=0.0)
    # How often waiting verdicts are checked against that wait (at most one wait late by this much).
    unmatched_check_interval_s: float = Field(default=5.0, gt=0.0)

    # A settled study (study, prediction and a joined verdict, nothing waiting) leaves the join table this long
    # after its last event: the table stays bounded. A verdict (a late amendment) for a study pruned before it
    # arrived waits like one for an unknown study and goes to the DLQ with a reason saying so.
    join_settled_ttl_s: float = Field(default=7 * 86400.0, gt=0.0)

    metrics_interval_s: float = Field(default=30.0, gt=0.0, description="Online metrics every this often")
    metrics_window: int = Field(default=500, ge=10, description="Sliding window: the newest N examples")

    # The retrain trigger (see docs/feedback-loop.md): any one rule fires one request.
    retrain_min_labels: int = Field(default=200, ge=1, description="Labelled examples since the champion's")
    auroc_floor: float = Field(default=0.70, ge=0.0, le=1.0)
    sensitivity_floor: float = Field(default=0.80, ge=0.0, le=1.0)
    floor_min_examples: int = Field(default=100, ge=1, description="Examples before the floors apply")
    retrain_on_drift: bool = True
    # A failed training run (an error, not a rejected challenger) is retried after this long, doubled after
    # each consecutive failure up to the max; a rejected challenger waits for retrain_min_labels new labels.
    retrain_failure_backoff_s: float = Field(default=300.0, gt=0.0)
    retrain_failure_backoff_max_s: float = Field(default=6 * 3600.0, gt=0.0)

    drift_reference_size: int = Field(default=200, ge=10, description="First N inputs of the champion")
    drift_window_size: int = Field(default=200, ge=10, description="The newest N inputs")
    drift_interval_s: float = Field(default=60.0, gt=0.0, description="Drift report every this often")

    # Online evaluation of challengers (shadow / canary; docs/feedback-loop.md "Online evaluation").
    rollout_min_paired: int = Field(
        default=200, ge=1, description="Paired verdicted studies before promoting"
    )
    rollout_min_per_class: int = Field(default=20, ge=1, description="Abnormal and normal among them, each")
    rollout_auroc_margin: float = Field(default=0.02, ge=0.0, le=1.0, description="Non-inferiority margin")
    rollout_sensitivity_floor: float = Field(default=0.80, ge=0.0, le=1.0)
    rollout_confidence: float = Field(default=0.95, gt=0.5, lt=1.0, description="Of the paired bootstrap CI")
    rollout_bootstrap_resamples: int = Field(default=2000, ge=100)
    canary_min_examples: int = Field(default=100, ge=1, description="Canary-arm verdicts before a rollback")
    canary_sensitivity_floor: float = Field(default=0.80, ge=0.0, le=1.0)
    canary_latency_ceiling_s: float = Field(default=10.0, gt=0.0, description="Canary scoring latency p95")

    @model_validator(mode="after")
    def _wait_checked_in_time(self) -> ProcessorSettings:
        if self.unmatched_check_interval_s > self.unmatched_verdict_wait_s:
            # A check interval longer than the wait would make the wait meaningless.
            self.unmatched_check_interval_s = self.unmatched_verdict_wait_s
        return self


def load_processor_settings() -> ProcessorSettings:
    return ProcessorSettings()
