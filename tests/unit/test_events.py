from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from cxr_triage.events import DeadLetterEventV1, PredictionEventV1, StudyEventV1
from cxr_triage.labels import LABELS

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _study(**overrides: object) -> StudyEventV1:
    fields: dict[str, object] = {
        "study_id": "1.2.840.113619.2.55.3",
        "image_uri": "file:///tmp/x.png",
        "sha256": "a" * 64,
        "content_type": "image/png",
        "size_bytes": 10,
        "received_at": NOW,
    }
    fields.update(overrides)
    return StudyEventV1(**fields)  # type: ignore[arg-type]


def test_study_event_round_trips_through_bytes() -> None:
    event = _study()
    assert StudyEventV1.from_bytes(event.to_bytes()) == event
    assert b'"schema_version":1' in event.to_bytes()


@pytest.mark.parametrize(
    "bad",
    [
        {"study_id": "../etc/passwd"},
        {"study_id": ""},
        {"sha256": "xyz"},
        {"content_type": "text/plain"},
        {"size_bytes": 0},
    ],
)
def test_study_event_rejects_invalid_fields(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        _study(**bad)


def test_study_event_rejects_other_schema_version() -> None:
    raw = _study().to_bytes().replace(b'"schema_version":1', b'"schema_version":2')
    with pytest.raises(ValidationError):
        StudyEventV1.from_bytes(raw)


def _prediction(probabilities: dict[str, float]) -> PredictionEventV1:
    return PredictionEventV1(
        study_id="abc",
        model_name="m",
        model_version="1",
        probabilities=probabilities,
        priority=0.5,
        received_at=NOW,
        scored_at=NOW,
    )


def test_prediction_needs_all_14_labels_in_range_and_keeps_label_order() -> None:
    probs = {label: 0.1 for label in reversed(LABELS)}
    assert list(_prediction(probs).probabilities) == list(LABELS)
    with pytest.raises(ValidationError, match="missing"):
        _prediction({label: 0.1 for label in LABELS[:13]})
    with pytest.raises(ValidationError, match="outside"):
        _prediction({**probs, "Edema": 1.5})
    with pytest.raises(ValidationError, match="outside"):
        _prediction({**probs, "Edema": float("nan")})


def test_dead_letter_requires_a_reason() -> None:
    with pytest.raises(ValidationError):
        DeadLetterEventV1(stage="worker", reason="", error_type="X")
    event = DeadLetterEventV1(stage="producer", reason="empty file", error_type="ImageRejected")
    assert DeadLetterEventV1.from_bytes(event.to_bytes()).reason == "empty file"


def test_labels_are_the_14_chexpert_observations_in_order() -> None:
    assert len(LABELS) == 14
    assert LABELS[0] == "No Finding" and LABELS[-1] == "Support Devices"
