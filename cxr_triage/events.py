"""Versioned event schemas: every message on a cxr topic is one of these, serialised as JSON.

A breaking change gets a new class and a new topic version (``cxr.studies.v2``); fields are only ever added
with defaults within a version, so old consumers keep reading new messages.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cxr_triage.labels import LABELS, NO_FINDING
from cxr_triage.sla import Tier
from cxr_triage.topics import verdict_key

STUDY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
PredictionRole = Literal["serving", "shadow"]
RolloutArm = Literal["champion", "canary"]
SHA256_PATTERN = r"^[0-9a-f]{64}$"
ContentType = Literal["image/png", "image/jpeg", "application/dicom"]
# The projection, from the DICOM header (ViewPosition); PNG / JPEG images say nothing of it.
View = Literal["PA", "AP", "LATERAL", "UNKNOWN"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, raw: bytes | str) -> Self:
        return cls.model_validate_json(raw)


class StudyImageV1(BaseModel):
    """One image of a study: where the image store keeps it, and what its header says (pseudonyms only)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    # The instance's pseudonymised SOPInstanceUID, or the content hash of a PNG / JPEG.
    image_id: str = Field(pattern=STUDY_ID_PATTERN)
    image_uri: str = Field(min_length=1, max_length=2048)
    sha256: str = Field(pattern=SHA256_PATTERN)
    content_type: ContentType
    size_bytes: int = Field(ge=1)
    view: View = "UNKNOWN"
    # What a reader should know and the model cannot judge, e.g. ``body_part:ABDOMEN``.
    flags: tuple[str, ...] = ()

    @property
    def frontal(self) -> bool:
        """Scored by a frontal-only model: PA, AP, or a view the header does not state."""
        return self.view != "LATERAL"


class StudyPseudonyms(BaseModel):
    """A study's patient and study identifiers, as keyed pseudonyms made at ingest (never the values).

    The same patient gets the same ``patient`` on every study, so training can split by patient and a
    reader's history can be joined without the identifier itself crossing the gateway.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    accession: str | None = Field(default=None, pattern=STUDY_ID_PATTERN)
    patient: str | None = Field(default=None, pattern=STUDY_ID_PATTERN)
    patient_name: str | None = Field(default=None, pattern=STUDY_ID_PATTERN)
    birth_date: str | None = Field(default=None, pattern=STUDY_ID_PATTERN)
    institution: str | None = Field(default=None, pattern=STUDY_ID_PATTERN)


class StudyEventV1(Event, StudyPseudonyms):
    """A study that arrived and waits to be scored (topic ``cxr.studies.v1``, key = study id).

    ``images`` lists every image of the study received so far; a study with a late image is published again
    with all of them (same key, so compaction keeps the whole study). The top-level image fields name the
    study's first frontal image (the only image on events older than ``images``). Identifiers are keyed
    pseudonyms made at ingest (``cxr_triage.ingest.pseudonym``): a DICOM study's id is its pseudonymised
    StudyInstanceUID, never the UID itself.
    """

    schema_name: Literal["cxr.study"] = "cxr.study"
    schema_version: Literal[1] = 1
    study_id: str = Field(pattern=STUDY_ID_PATTERN)
    image_uri: str = Field(min_length=1, max_length=2048)
    sha256: str = Field(pattern=SHA256_PATTERN)
    content_type: ContentType
    size_bytes: int = Field(ge=1)
    received_at: datetime
    source: str = Field(default="unknown", max_length=128)
    images: tuple[StudyImageV1, ...] = ()

    @property
    def all_images(self) -> tuple[StudyImageV1, ...]:
        """``images``, or for an event from before studies had several, its one image."""
        if self.images:
            return self.images
        return (
            StudyImageV1(
                image_id=self.sha256,
                image_uri=self.image_uri,
                sha256=self.sha256,
                content_type=self.content_type,
                size_bytes=self.size_bytes,
            ),
        )

    @property
    def primary_image(self) -> StudyImageV1:
        """The image the top-level fields name (the first frontal one)."""
        images = self.all_images
        return next(
            (i for i in images if i.sha256 == self.sha256 and i.image_uri == self.image_uri), images[0]
        )

    @classmethod
    def of_images(
        cls, images: Sequence[StudyImageV1], *, pseudonyms: StudyPseudonyms | None = None, **fields: Any
    ) -> StudyEventV1:
        """A study event whose top-level image is the first frontal one (else the first)."""
        if not images:
            raise ValueError("a study needs at least one image")
        primary = next((image for image in images if image.frontal), images[0])
        return cls(
            image_uri=primary.image_uri,
            sha256=primary.sha256,
            content_type=primary.content_type,
            size_bytes=primary.size_bytes,
            images=tuple(images),
            **(pseudonyms or StudyPseudonyms()).model_dump(),
            **fields,
        )


def checked_probabilities(value: dict[str, float]) -> dict[str, float]:
    """The 14 labels' probabilities in label order; ``ValueError`` if a label is missing, extra or not in [0, 1]."""
    if set(value) != set(LABELS):
        missing = sorted(set(LABELS) - set(value))
        extra = sorted(set(value) - set(LABELS))
        raise ValueError(f"probabilities must name exactly the 14 labels (missing={missing}, extra={extra})")
    for label, p in value.items():
        if not (math.isfinite(p) and 0.0 <= p <= 1.0):
            raise ValueError(f"probability for {label!r} is {p}, outside [0, 1]")
    return {label: value[label] for label in LABELS}


class ImagePredictionV1(StudyImageV1):
    """One image of a scored study with its own reading, or none when the model does not read its view."""

    model_version: str | None = None
    probabilities: dict[str, float] | None = None
    priority: float | None = Field(default=None, ge=0.0, le=1.0)
    tier: Tier | None = None
    scored_at: datetime | None = None

    @field_validator("probabilities")
    @classmethod
    def _all_labels_in_range(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        return None if value is None else checked_probabilities(value)

    @property
    def scored(self) -> bool:
        return self.probabilities is not None and self.priority is not None


class PredictionEventV1(Event):
    """The model's reading of one study (topic ``cxr.predictions.v1``, key = study id).

    A study is read image by image: ``images`` holds every image known so far with its own reading (a lateral
    the model does not read is listed unscored), and the top-level values are those of its most urgent image
    (``image_id``), so the study is as urgent as its most urgent image. A study whose later image arrives is
    published again with it (a newer ``scored_at``); a study's first image is never re-scored.
    """

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
    # The model's operating threshold on ``priority`` (its abnormal score), when the model states one: online
    # sensitivity and specificity are measured at it.
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    # Online evaluation (shadow / canary): ``role`` says whether this prediction ordered the worklist
    # ("serving") or was only recorded beside it ("shadow"); ``arm`` which model's score orders this study
    # ("champion", or "canary" for the stable hash-chosen fraction a canary orders). A shadow prediction is
    # keyed ``topics.shadow_key(study_id, model_version)`` so compaction never replaces the serving one.
    role: PredictionRole = "serving"
    arm: RolloutArm = "champion"
    image_id: str | None = Field(default=None, pattern=STUDY_ID_PATTERN)
    images: tuple[ImagePredictionV1, ...] = ()

    @field_validator("probabilities")
    @classmethod
    def _all_labels_in_range(cls, value: dict[str, float]) -> dict[str, float]:
        return checked_probabilities(value)


class DeadLetterEventV1(Event):
    """Input that could not be processed, with why (topic ``cxr.dlq.v1``).

    ``original`` carries the offending event as text so that an operator can replay it after a fix; for raw
    files rejected by a producer it is empty and ``sha256`` identifies the content (never the file path,
    which may carry a patient's name).
    """

    schema_name: Literal["cxr.dead_letter"] = "cxr.dead_letter"
    schema_version: Literal[1] = 1
    stage: Literal["producer", "worker", "processor"]
    reason: str = Field(min_length=1)
    error_type: str
    study_id: str | None = None
    sha256: str | None = None
    original: str | None = None
    original_topic: str | None = None
    original_partition: int | None = None
    original_offset: int | None = None
    occurred_at: datetime = Field(default_factory=utcnow)
    # Which producer refused it (``dicom-gateway``, ``watch``, ``cli``...): where to look, never a path.
    source: str | None = Field(default=None, max_length=128)


def _fourteen_labels(value: dict[str, Literal[0, 1]]) -> dict[str, Literal[0, 1]]:
    if set(value) != set(LABELS):
        missing = sorted(set(LABELS) - set(value))
        extra = sorted(set(value) - set(LABELS))
        raise ValueError(f"labels must name exactly the 14 findings (missing={missing}, extra={extra})")
    return {label: value[label] for label in LABELS}


def _known_findings(value: tuple[str, ...]) -> tuple[str, ...]:
    unknown = sorted(set(value) - set(LABELS))
    if unknown:
        raise ValueError(f"uncertain names unknown findings: {unknown}")
    return tuple(label for label in LABELS if label in value)


def abnormal_of(labels: Mapping[str, int]) -> int:
    """A verdict's abnormal-vs-normal truth: normal only when the radiologist ticked No Finding."""
    return 0 if labels[NO_FINDING] == 1 else 1


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
    # The client's Idempotency-Key (or the one the API derived): a retry with it is answered, not re-recorded.
    idempotency_key: str | None = Field(default=None, max_length=128)

    _all_labels = field_validator("labels")(_fourteen_labels)
    _known_uncertain = field_validator("uncertain")(_known_findings)

    @property
    def key(self) -> str:
        """Kafka key: one per (study, radiologist), so compaction keeps each radiologist's latest reading."""
        return verdict_key(self.study_id, self.radiologist)

    @property
    def abnormal(self) -> int:
        return abnormal_of(self.labels)


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


class FeedbackEventV1(Event):
    """A verdict joined with the prediction it judged: one training example (``cxr.feedback.v1``).

    Key = ``topics.verdict_key(study_id, radiologist)``: an amendment replaces that radiologist's earlier example.
    ``labels`` are the radiologist's 14 findings as 1/0 and ``uncertain`` those marked uncertain; the
    probabilities, priority, tier and threshold are the model's at scoring time. Timings follow the study:
    received -> scored -> claimed -> decided. No note, no patient identifier: the image is referenced by URI
    and content hash only.
    """

    schema_name: Literal["cxr.feedback"] = "cxr.feedback"
    schema_version: Literal[1] = 1
    study_id: str = Field(pattern=STUDY_ID_PATTERN)
    radiologist: str = Field(min_length=1, max_length=64)
    verdict_id: str = Field(min_length=8, max_length=64)
    kind: Literal["verdict", "amendment"]
    image_uri: str = Field(min_length=1, max_length=2048)
    sha256: str = Field(pattern=SHA256_PATTERN)
    content_type: ContentType
    source: str = Field(default="unknown", max_length=128)
    labels: dict[str, Literal[0, 1]]
    uncertain: tuple[str, ...] = ()
    agreed_with_model: bool = False
    model_name: str
    model_version: str
    probabilities: dict[str, float]
    priority: float = Field(ge=0.0, le=1.0)
    tier: Tier | None = None
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    received_at: datetime
    scored_at: datetime
    claimed_at: datetime | None = None
    decided_at: datetime
    joined_at: datetime = Field(default_factory=utcnow)
    # Online evaluation: which arm's model ordered this study (the prediction above is always the serving one,
    # "canary" when a canary's score ordered it), and the shadow predictions of the same study by model
    # version, so that the champion and a challenger are compared on the same verdicts (paired). The join
    # re-publishes the example when a shadow prediction arrives after it (same verdict id, one more entry).
    arm: RolloutArm = "champion"
    shadow: dict[str, PredictionEventV1] = Field(default_factory=dict)

    _all_labels = field_validator("labels")(_fourteen_labels)
    _known_uncertain = field_validator("uncertain")(_known_findings)

    @property
    def key(self) -> str:
        return verdict_key(self.study_id, self.radiologist)

    @property
    def abnormal(self) -> int:
        return abnormal_of(self.labels)


MetricsWindow = Literal["sliding", "since_promotion"]


class MetricsEventV1(Event):
    """How one served model version does on radiologists' reads (``cxr.metrics.v1``, key = model version).

    A metric is ``None`` when the window cannot define it (one class only, or no examples).
    """

    schema_name: Literal["cxr.metrics"] = "cxr.metrics"
    schema_version: Literal[1] = 1
    model_name: str
    model_version: str
    window: MetricsWindow
    examples: int = Field(ge=0)
    abnormal: int = Field(ge=0)
    auroc_abnormal: float | None = None
    auroc_per_finding: dict[str, float] = Field(default_factory=dict)
    threshold: float | None = None
    sensitivity: float | None = None
    specificity: float | None = None
    agreement_rate: float | None = None
    # Median seconds from arrival to the radiologist's decision, per SLA tier present in the window.
    time_to_read_s: dict[str, float] = Field(default_factory=dict)
    computed_at: datetime = Field(default_factory=utcnow)


DriftFeature = Literal["intensity", "size", "view", "source", "prediction"]


class DriftScore(BaseModel):
    """One feature's comparison of the current window with the reference window."""

    model_config = ConfigDict(frozen=True)

    feature: DriftFeature
    psi: float | None = None
    ks_statistic: float | None = None
    ks_pvalue: float | None = None
    flagged: bool = False


class DriftReportV1(Event):
    """Input and prediction drift against the champion's reference window (``cxr.drift.v1``, key = version).

    Published at every evaluation; ``alert`` is true when any feature crosses its documented threshold.
    """

    schema_name: Literal["cxr.drift"] = "cxr.drift"
    schema_version: Literal[1] = 1
    model_version: str
    reference_size: int = Field(ge=0)
    window_size: int = Field(ge=0)
    scores: tuple[DriftScore, ...] = ()
    alert: bool = False
    computed_at: datetime = Field(default_factory=utcnow)


TrainingReason = Literal["new_labels", "auroc_floor", "sensitivity_floor", "drift"]


class TrainingRequestEventV1(Event):
    """Ask the retrain worker for a challenger (``cxr.training-requests.v1``, key = request id).

    The data window is the feedback store's sequence range ``(after_seq, up_to_seq]``: examples the champion
    was not trained on. At most one request is outstanding: the next waits for this one's result.
    """

    schema_name: Literal["cxr.training-request"] = "cxr.training-request"
    schema_version: Literal[1] = 1
    request_id: str = Field(min_length=8, max_length=64)
    reason: TrainingReason
    detail: str = ""
    champion_version: str | None = None
    labelled_since_champion: int = Field(ge=0)
    total_examples: int = Field(ge=0)
    after_seq: int = Field(ge=0)
    up_to_seq: int = Field(ge=0)
    requested_at: datetime = Field(default_factory=utcnow)


TrainingOutcome = Literal["promoted", "rejected", "failed"]


class TrainingResultEventV1(Event):
    """What became of a training request (``cxr.training-results.v1``, key = request id)."""

    schema_name: Literal["cxr.training-result"] = "cxr.training-result"
    schema_version: Literal[1] = 1
    request_id: str = Field(min_length=8, max_length=64)
    outcome: TrainingOutcome
    reason: str = ""
    champion_version: str | None = None
    challenger_version: str | None = None
    # The version serving after this result (the challenger when promoted, else the champion).
    serving_version: str | None = None
    # Feedback examples the challenger trained on: the store's sequence range (after_seq, up_to_seq].
    after_seq: int = Field(default=0, ge=0)
    up_to_seq: int = Field(default=0, ge=0)
    gate: dict[str, float | None] = Field(default_factory=dict)
    mlflow_run_id: str | None = None
    started_at: datetime | None = None
    finished_at: datetime = Field(default_factory=utcnow)


RolloutMode = Literal["none", "shadow", "canary"]
DecisionAction = Literal["shadow_started", "canary_started", "promote", "rollback", "keep_waiting", "stopped"]


class ModelDecisionEventV1(Event):
    """A decision on a challenger under online evaluation (``cxr.model-decisions.v1``, key = challenger version).

    ``metrics`` holds the paired numbers the decision rests on (both models on the same verdicted studies:
    counts, AUROCs and their difference with its confidence interval, sensitivities, latencies), by name.
    """

    schema_name: Literal["cxr.model-decision"] = "cxr.model-decision"
    schema_version: Literal[1] = 1
    decision_id: str = Field(min_length=8, max_length=64)
    action: DecisionAction
    mode: RolloutMode
    champion_version: str
    challenger_version: str
    fraction: float | None = Field(default=None, ge=0.0, le=1.0)
    reason: str = ""
    paired_studies: int = Field(default=0, ge=0)
    metrics: dict[str, float | None] = Field(default_factory=dict)
    decided_by: Literal["policy", "operator"] = "policy"
    decided_at: datetime = Field(default_factory=utcnow)
