"""Request and response schemas of the worklist API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cxr_triage.labels import LABELS
from cxr_triage.sla import Tier

StudyStatus = Literal["unclaimed", "claimed", "read", "unindexed"]


class ErrorPublic(BaseModel):
    detail: str = Field(description="What went wrong, in words a user can act on")
    errors: list[dict[str, object]] | None = Field(default=None, description="Field errors (422 only)")


class HealthPublic(BaseModel):
    status: str
    redis: str


class MePublic(BaseModel):
    name: str
    role: str


class TopFinding(BaseModel):
    label: str
    probability: float


class LeasePublic(BaseModel):
    radiologist: str
    claimed_at: datetime
    expires_at: datetime
    expires_in_s: float


class SlaPublic(BaseModel):
    tier: Tier
    max_wait_s: float
    waited_s: float = Field(description="Since the study was received (until it was read, once read)")
    time_left_s: float = Field(description="Until the tier's maximum wait; negative when overdue")
    due_at: datetime
    overdue: bool
    effective_priority: float = Field(
        description="priority + waited_s / aging time (the tier's max wait, at most the aging horizon): the "
        "worklist order"
    )


class StudyPublic(BaseModel):
    study_id: str
    priority: float = Field(description="Model priority in [0, 1]")
    probabilities: dict[str, float] = Field(description="The 14 CheXpert findings, in label order")
    model_name: str
    model_version: str
    received_at: datetime
    scored_at: datetime


class WorklistItem(StudyPublic):
    status: Literal["unclaimed", "claimed"]
    sla: SlaPublic
    lease: LeasePublic | None
    top_findings: list[TopFinding]


class WorklistPublic(BaseModel):
    items: list[WorklistItem]
    total: int = Field(description="Unread studies matching the filters, in all")
    limit: int
    offset: int
    generated_at: datetime


class VerdictSummary(BaseModel):
    verdict_id: str
    radiologist: str
    kind: Literal["verdict", "amendment"]
    decided_at: datetime


class ImagePublic(BaseModel):
    """One image of a study with its own reading (none for a view the model does not read)."""

    image_id: str
    view: Literal["PA", "AP", "LATERAL", "UNKNOWN"]
    flags: list[str] = Field(description="What a reader should know and the model cannot judge")
    scored: bool = Field(
        description="Whether the model read this image (a lateral only if it reads laterals)"
    )
    primary: bool = Field(description="The study's values are this image's (its most urgent image)")
    model_version: str | None
    priority: float | None
    tier: Tier | None
    probabilities: dict[str, float] | None
    top_findings: list[TopFinding]
    heatmap_available: bool
    image_url: str = Field(description="GET: this image as PNG")
    heatmap_url: str | None = Field(description="GET with ?finding=: this image's activation map over it")


class StudyDetail(StudyPublic):
    image_id: str | None = Field(description="The image the study's values are of (its most urgent)")
    images: list[ImagePublic] = Field(description="Every image of the study, in the order they were sent")
    status: StudyStatus
    sla: SlaPublic
    lease: LeasePublic | None
    top_findings: list[TopFinding]
    content_type: str | None
    scoring_latency_s: float = Field(description="scored_at - received_at")
    read_at: datetime | None
    heatmap_available: bool
    verdicts: list[VerdictSummary]


class PatientDetails(BaseModel):
    """The patient as the original DICOM names them: for the radiologist reading the study, audited."""

    patient_name: str | None
    patient_id: str | None
    birth_date: str | None = Field(description="DICOM date, YYYYMMDD")
    sex: str | None
    accession_number: str | None
    study_date: str | None = Field(description="DICOM date, YYYYMMDD")


class ClaimCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lease_s: int | None = Field(
        default=None, ge=10, description="Lease length; the server's default if absent"
    )


class VerdictCreate(BaseModel):
    """A radiologist's reading: each of the 14 findings present (1) or absent (0)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "labels": {label: int(label == "No Finding") for label in LABELS},
                "uncertain": [],
                "note": None,
                "agreed_with_model": False,
            }
        },
    )

    labels: dict[str, Literal[0, 1]] = Field(description="All 14 CheXpert findings, 1 = present, 0 = absent")
    uncertain: list[str] = Field(default_factory=list, max_length=14, description="Findings marked uncertain")
    note: str | None = Field(default=None, max_length=2000)
    agreed_with_model: bool = Field(default=False, description="Set by the 'agree with model' button")
    model_version_seen: str | None = Field(
        default=None, max_length=64, description="Model version shown to the radiologist (default: current)"
    )

    @field_validator("labels")
    @classmethod
    def _all_labels(cls, value: dict[str, Literal[0, 1]]) -> dict[str, Literal[0, 1]]:
        missing = [label for label in LABELS if label not in value]
        extra = sorted(set(value) - set(LABELS))
        if missing or extra:
            raise ValueError(f"labels must name exactly the 14 findings (missing={missing}, unknown={extra})")
        return {label: value[label] for label in LABELS}

    @field_validator("uncertain")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(LABELS))
        if unknown:
            raise ValueError(f"uncertain names unknown findings: {unknown}")
        return [label for label in LABELS if label in value]


class VerdictPublic(BaseModel):
    verdict_id: str
    study_id: str
    radiologist: str
    kind: Literal["verdict", "amendment"]
    amends: str | None
    labels: dict[str, int]
    uncertain: list[str]
    note: str | None
    model_version: str
    decided_at: datetime
    idempotency_key: str | None = Field(
        default=None, description="The submission's Idempotency-Key: the client's, or the one the API derived"
    )
    replayed: bool = Field(description="True when this exact verdict had been recorded before (no new event)")


class UploadPublic(BaseModel):
    study_id: str
    sha256: str
    content_type: str
    size_bytes: int
    received_at: datetime
    status: Literal["queued"] = "queued"


class SeriesPublic(BaseModel):
    labels: dict[str, str]
    value: float | None = Field(description="The latest value; null when Prometheus gives NaN")


class PanelPublic(BaseModel):
    title: str
    unit: str
    expr: str = Field(description="The PromQL the Grafana panel of the same title runs")
    series: list[SeriesPublic]
    error: str | None = None


class DashboardPublic(BaseModel):
    uid: str
    title: str
    panels: list[PanelPublic]


class AlertPublic(BaseModel):
    name: str
    state: str = Field(description="pending or firing")
    severity: str
    summary: str
    since: str | None = None


class SystemPublic(BaseModel):
    """The Grafana dashboards' figures and the firing alerts, evaluated now through Prometheus."""

    evaluated_at: datetime
    dashboards: list[DashboardPublic]
    alerts: list[AlertPublic]
