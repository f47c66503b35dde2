"""The figures engineers watch, as PromQL: the Grafana dashboards and the API's system view show these same panels.

Each panel is one query. ``deploy/grafana_dashboards.py`` renders them into the provisioned dashboard JSON, and
the API's ``/system`` evaluates them through Prometheus for people without Grafana. A test drives traffic
through a real stack and checks that every panel's query parses and returns data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

PanelKind = Literal["timeseries", "stat", "table"]


@dataclass(frozen=True)
class Panel:
    title: str
    expr: str
    unit: str = "short"  # a Grafana unit id: short, s, percentunit, ...
    legend: str = ""  # Grafana legend template, e.g. "{{tier}}"
    kind: PanelKind = "timeseries"
    description: str = ""


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...]


# Dead letters from every stage, by reason: the refusals of the gateway and of `produce --watch` carry their kind
# as the reason.
_DEAD_LETTERS: Final = (
    'sum by (service, reason) (label_replace(rate(cxr_worker_studies_dead_lettered_total[5m]), "service", '
    '"worker", "", "") or label_replace(rate(cxr_processors_dead_lettered_total[5m]), "service", "processors", '
    '"", "") or label_replace(label_replace(rate(cxr_gateway_rejected_total[5m]), "reason", "$1", "kind", '
    '"(.*)"), "service", "gateway", "", "") or label_replace(label_replace(rate(cxr_producer_rejected_total[5m]), '
    '"reason", "$1", "kind", "(.*)"), "service", "watch", "", "")) * 60'
)


def _quantile(q: float, metric: str, window: str = "5m") -> str:
    return f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket[{window}])))"


OPERATIONS: Final = Dashboard(
    uid="cxr-operations",
    title="cxr-triage: operations",
    description="Throughput, latency, consumer lag, worklist depth and waits by tier, errors.",
    panels=(
        Panel(
            "Components up",
            "up",
            legend="{{job}} {{instance}}",
            kind="table",
            description="1: Prometheus scraped the component at its last try.",
        ),
        Panel(
            "Studies received per minute",
            'deriv(cxr_kafka_topic_end_offset{topic="cxr.studies.v1"}[5m]) * 60',
            legend="all producers",
            description="Study events written to cxr.studies.v1 (files, folders, uploads, the DICOM gateway).",
        ),
        Panel(
            "DICOM instances per minute, by outcome",
            "sum by (outcome) (rate(cxr_gateway_instances_total[5m])) * 60",
            legend="{{outcome}}",
        ),
        Panel(
            "Studies scored per minute",
            "sum(rate(cxr_worker_studies_scored_total[5m])) * 60",
            legend="scored",
        ),
        Panel(
            "End-to-end latency (received to worklist), p50 / p99",
            f'label_replace({_quantile(0.5, "cxr_worker_end_to_end_latency_seconds")}, "q", "p50", "", "") or '
            f'label_replace({_quantile(0.99, "cxr_worker_end_to_end_latency_seconds")}, "q", "p99", "", "")',
            unit="s",
            legend="{{q}}",
        ),
        Panel(
            "Triton call per batch, p99 (worker's view)",
            _quantile(0.99, "cxr_worker_triton_latency_seconds"),
            unit="s",
            legend="p99",
        ),
        Panel(
            "Triton queue and compute time per request",
            "label_replace(sum(rate(nv_inference_queue_duration_us[5m])) / clamp_min(sum(rate("
            'nv_inference_request_success[5m])), 1e-9) / 1e6, "phase", "queue", "", "") or label_replace(sum(rate('
            "nv_inference_compute_infer_duration_us[5m])) / clamp_min(sum(rate(nv_inference_request_success[5m])), "
            '1e-9) / 1e6, "phase", "compute", "", "")',
            unit="s",
            legend="{{phase}}",
            description="From Triton's own metrics port.",
        ),
        Panel(
            "Micro-batch size (mean)",
            "sum(rate(cxr_worker_batch_size_sum[5m])) / clamp_min(sum(rate(cxr_worker_batch_size_count[5m])), 1e-9)",
            legend="messages per batch",
        ),
        Panel(
            "Consumer lag by group",
            "sum by (group) (cxr_kafka_consumer_lag)",
            legend="{{group}}",
            description="Messages after each consumer group's committed offset, over all our topics.",
        ),
        Panel(
            "Consumer lag by group and partition",
            "cxr_kafka_consumer_lag",
            legend="{{group}} {{topic}}[{{partition}}]",
            kind="table",
        ),
        Panel("Unread studies by tier", "cxr_worklist_unread", legend="{{tier}}"),
        Panel(
            "Oldest unread study by tier, as a share of its SLA",
            "cxr_worklist_oldest_unread_seconds / on (tier) cxr_worklist_sla_seconds",
            unit="percentunit",
            legend="{{tier}}",
            description="1 (100%): the tier's oldest study has waited its whole SLA.",
        ),
        Panel(
            "Oldest unread study by tier",
            "cxr_worklist_oldest_unread_seconds",
            unit="s",
            legend="{{tier}}",
        ),
        Panel(
            "Claims and verdicts per minute",
            'sum by (route) (rate(cxr_api_requests_total{method="POST", status=~"2..", '
            'route=~"/worklist/claim|/studies/.study_id./verdict"}[5m])) * 60',
            legend="{{route}}",
        ),
        Panel(
            "API responses per minute, by status",
            "sum by (status) (rate(cxr_api_requests_total[5m])) * 60",
            legend="{{status}}",
        ),
        Panel(
            "Dead letters per minute, by stage and reason",
            _DEAD_LETTERS,
            legend="{{service}}: {{reason}}",
        ),
        Panel(
            "Dead-letter topic, messages per minute",
            'deriv(cxr_kafka_topic_end_offset{topic="cxr.dlq.v1"}[5m]) * 60',
            legend="cxr.dlq.v1",
        ),
    ),
)

MODEL: Final = Dashboard(
    uid="cxr-model",
    title="cxr-triage: model",
    description="Online metrics by model version, drift, prediction distribution, training and promotions.",
    panels=(
        Panel(
            "Served model version",
            "max by (model_version) (cxr_worker_model_info)",
            legend="{{model_version}}",
            kind="table",
        ),
        Panel(
            "Served model carries trained thresholds (0: untrained)",
            "min(cxr_worker_model_calibrated)",
            kind="stat",
        ),
        Panel(
            "Online AUROC by model version",
            "cxr_online_auroc",
            unit="percentunit",
            legend="{{model_version}} ({{window}})",
            description="Abnormal vs normal, on radiologists' reads of the newest studies.",
        ),
        Panel(
            "Online sensitivity and specificity by model version",
            'label_replace(cxr_online_sensitivity, "measure", "sensitivity", "", "") or '
            'label_replace(cxr_online_specificity, "measure", "specificity", "", "")',
            unit="percentunit",
            legend="{{model_version}} {{measure}}",
        ),
        Panel(
            "Examples in the online metrics window",
            "cxr_online_examples",
            legend="{{model_version}} ({{window}})",
        ),
        Panel(
            "Input drift (PSI) by feature",
            "cxr_drift_psi",
            legend="{{model_version}} {{feature}}",
        ),
        Panel("Drift flagged", "max by (model_version) (cxr_drift_alert)", kind="stat"),
        Panel(
            "Prediction distribution (studies per priority bucket, last hour)",
            "sum by (le) (increase(cxr_worker_priority_bucket[1h]))",
            legend="priority <= {{le}}",
        ),
        Panel(
            "Studies filed per minute, by tier",
            "sum by (tier) (rate(cxr_worker_studies_by_tier_total[5m])) * 60",
            legend="{{tier}}",
        ),
        Panel(
            "Training runs by outcome (last day)",
            "sum by (outcome) (increase(cxr_retrain_requests_total[1d]))",
            legend="{{outcome}}",
        ),
        Panel("Training run in progress", "max(cxr_retrain_busy)", kind="stat"),
        Panel(
            "Promotions and rollbacks (last day)",
            "sum by (outcome) (increase(cxr_rollout_decisions_total[1d]))",
            legend="{{outcome}}",
        ),
    ),
)

DASHBOARDS: Final[tuple[Dashboard, ...]] = (OPERATIONS, MODEL)
