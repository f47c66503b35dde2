"""Versioned event schemas: every message on a cxr topic is one of these, serialised as JSON.

A breaking change gets a new class and a new topic version (``cxr.studies.v2``); fields are only ever added
with defaults within a version, so old consumers keep reading new messages.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cxr_triage.labels import LABELS
from cxr_triage.sla import Tier

STUDY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
ContentType = Literal["image/png", "image/jpeg", "application/dicom"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, raw: bytes | str) -> Self:
        return cls.model_validate_json(raw)


class StudyEventV1(Event):
    """A study that arrived and waits to be scored (topic ``cxr.studies.v1``, key = study id)."""

    schema_name: Literal["cxr.study"] = "cxr.study"
    schema_version: Literal[1] = 1
    study_id: str = Field(pattern=STUDY_ID_PATTERN)
    image_uri: str = Field(min_length=1, max_length=2048)
    sha256: str = Field(pattern=SHA256_PATTERN)
    content_type: ContentType
    size_bytes: int = Field(ge=1)
    received_at: datetime
    source: str = Field(default="unknown", max_length=128)


class PredictionEventV1(Event):
    """The model's reading of one study (topic ``cxr.predictions.v1``, key = study id)."""

    schema_name: Literal["cxr.prediction"] = "cxr.prediction"
    schema_version: Literal[1] = 1
    study_id: str = Field(pattern=STUDY_ID_PATTERN)
    model_name: str
    model_version: str
    probabilities: dict[str, float]
    priority: float = Field(ge=0.0, le=1.0)
    received_at: datetime
    scored_at: datetime
    # The SLA tier, from the scoring model's own thresholds (absent on events written before models had them).
    tier: Tier | None = None

    @field_validator("probabilities")
    @classmethod
    def _all_labels_in_range(cls, value: dict[str, float]) -> dict[str, float]:
        if set(value) != set(LABELS):
            missing = sorted(set(LABELS) - set(value))
            extra = sorted(set(value) - set(LABELS))
            raise ValueError(
                f"probabilities must name exactly the 14 labels (missing={missing}, extra={extra})"
            )
        for label, p in value.items():
            if not (math.isfinite(p) and 0.0 <= p <= 1.0):
                raise ValueError(f"probability for {label!r} is {p}, outside [0, 1]")
        return {label: value[label] for label in LABELS}


class DeadLetterEventV1(Event):
    """Input that could not be processed, with why (topic ``cxr.dlq.v1``).

    ``original`` carries the offending event as text so that an operator can replay it after a fix; for raw
    files rejected by a producer it is empty and ``sha256`` identifies the content (never the file path,
    which may carry a patient's name).
    """

    schema_name: Literal["cxr.dead_letter"] = "cxr.dead_letter"
    schema_version: Literal[1] = 1
    stage: Literal["producer", "worker"]
    reason: str = Field(min_length=1)
    error_type: str
    study_id: str | None = None
    sha256: str | None = None
    original: str | None = None
    original_topic: str | None = None
    original_partition: int | None = None
    original_offset: int | None = None
    occurred_at: datetime = Field(default_factory=utcnow)


class VerdictEventV1(Event):
    """A radiologist's reading of one study (topic ``cxr.verdicts.v1``, key = study id).

    Per (study, radiologist) the first verdict has ``kind="verdict"``; a later different one is an
    ``"amendment"`` naming the verdict it replaces in ``amends``. ``labels`` holds the 14 findings as 1/0,
    ``uncertain`` those the radiologist marked as uncertain. The note is free text: never logged.
    """

    schema_name: Literal["cxr.verdict"] = "cxr.verdict"
    schema_version: Literal[1] = 1
    verdict_id: str = Field(min_length=8, max_length=64)
    kind: Literal["verdict", "amendment"]
    amends: str | None = None
    study_id: str = Field(pattern=STUDY_ID_PATTERN)
    radiologist: str = Field(min_length=1, max_length=64)
    labels: dict[str, Literal[0, 1]]
    uncertain: tuple[str, ...] = ()
    note: str | None = Field(default=None, max_length=2000)
    agreed_with_model: bool = False
    model_name: str
    model_version: str
    received_at: datetime
    scored_at: datetime
    claimed_at: datetime | None = None
    decided_at: datetime

    @field_validator("labels")
    @classmethod
    def _all_labels(cls, value: dict[str, Literal[0, 1]]) -> dict[str, Literal[0, 1]]:
        if set(value) != set(LABELS):
            missing = sorted(set(LABELS) - set(value))
            extra = sorted(set(value) - set(LABELS))
            raise ValueError(f"labels must name exactly the 14 findings (missing={missing}, extra={extra})")
        return {label: value[label] for label in LABELS}

    @field_validator("uncertain")
    @classmethod
    def _known_uncertain(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - set(LABELS))
        if unknown:
            raise ValueError(f"uncertain names unknown findings: {unknown}")
        return tuple(label for label in LABELS if label in value)


AuditAction = Literal["view", "claim", "release", "verdict", "upload", "amend"]
AuditOutcome = Literal["ok", "denied", "not_found", "conflict", "invalid", "unavailable", "error"]


class AuditEventV1(Event):
    """Who did what to which study, and how it ended (topic ``cxr.audit.v1``, key = actor).

    Carries user names and study ids only: never image paths, notes or patient identifiers.
    """

    schema_name: Literal["cxr.audit"] = "cxr.audit"
    schema_version: Literal[1] = 1
    actor: str
    role: str
    action: AuditAction
    resource: str = Field(description="what was acted on: worklist, study, image, heatmap, verdict, upload")
    study_id: str | None = None
    outcome: AuditOutcome
    status_code: int | None = None
    at: datetime = Field(default_factory=utcnow)
