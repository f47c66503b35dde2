"""The API's event schemas: VerdictEventV1 and AuditEventV1 (cxr_triage.events)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from cxr_triage import topics
from cxr_triage.events import AuditEventV1, VerdictEventV1
from cxr_triage.labels import LABELS

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def _verdict(**overrides: object) -> VerdictEventV1:
    fields: dict[str, object] = {
        "verdict_id": "0123456789abcdef",
        "kind": "verdict",
        "study_id": "s1",
        "radiologist": "ana",
        "labels": {label: 0 for label in reversed(LABELS)},
        "model_name": "cxr_classifier",
        "model_version": "1",
        "received_at": NOW,
        "scored_at": NOW,
        "decided_at": NOW,
    }
    return VerdictEventV1.model_validate(fields | overrides)


def test_verdict_round_trips_in_label_order() -> None:
    event = _verdict(uncertain=("Edema", "Cardiomegaly"))
    assert list(event.labels) == list(LABELS)
    assert event.uncertain == ("Cardiomegaly", "Edema")
    assert VerdictEventV1.from_bytes(event.to_bytes()) == event
    assert event.schema_name == "cxr.verdict" and event.schema_version == 1


def test_verdict_rejects_bad_labels() -> None:
    with pytest.raises(ValidationError, match="missing"):
        _verdict(labels={"Edema": 1})
    with pytest.raises(ValidationError):
        _verdict(labels={label: 2 for label in LABELS})
    with pytest.raises(ValidationError, match="unknown findings"):
        _verdict(uncertain=("Heartache",))
    with pytest.raises(ValidationError):
        _verdict(study_id="../etc")


def test_audit_event_and_topic() -> None:
    event = AuditEventV1(actor="ana", role="radiologist", action="claim", resource="worklist", outcome="ok")
    assert AuditEventV1.from_bytes(event.to_bytes()).action == "claim"
    with pytest.raises(ValidationError):
        AuditEventV1(actor="ana", role="radiologist", action="delete", resource="x", outcome="ok")
    assert topics.AUDIT == "cxr.audit.v1" and topics.AUDIT in topics.ALL
