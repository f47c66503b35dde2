"""Idempotency keys of verdict submissions: header validation, derived keys, deterministic verdict ids."""

from __future__ import annotations

import pytest

from cxr_triage.labels import LABELS
from priority_queue_api import idempotency
from priority_queue_api.errors import BadRequest
from priority_queue_api.models import VerdictCreate


def _body(note: str | None = "small effusion", **present: int) -> VerdictCreate:
    labels = {label: present.get(label.replace(" ", "_"), 0) for label in LABELS}
    return VerdictCreate.model_validate({"labels": labels, "uncertain": [], "note": note})


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("8e03978e-40d5-43e8-bc93-6894a57f9324", "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        ('"8e03978e-40d5"', "8e03978e-40d5"),  # the draft's structured-field string
        ("x" * 128, "x" * 128),
        ("!~", "!~"),
        (None, None),
    ],
)
def test_valid_keys_are_taken_as_sent(raw: str | None, key: str | None) -> None:
    assert idempotency.parse_header(raw) == key


@pytest.mark.parametrize("raw", ["", '""', "x" * 129, "two words", "tab\there", "line\n", "clé", "\x7f"])
def test_invalid_keys_are_a_bad_request_that_says_why(raw: str) -> None:
    with pytest.raises(BadRequest, match="1 to 128 visible ASCII"):
        idempotency.parse_header(raw)


def test_derived_key_follows_the_reading_and_the_verdict_it_replaces_never_the_note_text() -> None:
    body = _body(Edema=1)
    key = idempotency.derived_key("s1", "ana", body, None)
    assert key == idempotency.derived_key("s1", "ana", _body(Edema=1), None)
    assert key.startswith(idempotency.DERIVED_PREFIX) and len(key) <= idempotency.MAX_LENGTH
    assert idempotency.parse_header(key) == key
    assert "effusion" not in key
    others = {
        idempotency.derived_key("s2", "ana", body, None),
        idempotency.derived_key("s1", "ben", body, None),
        idempotency.derived_key("s1", "ana", _body(Edema=0), None),
        idempotency.derived_key("s1", "ana", _body(note="other", Edema=1), None),
        # going back to a reading after an amendment is a new submission
        idempotency.derived_key("s1", "ana", body, "f" * 32),
    }
    assert key not in others and len(others) == 5


def test_verdict_id_is_determined_by_study_radiologist_and_key() -> None:
    first = idempotency.verdict_id("s1", "ana", "k1")
    assert first == idempotency.verdict_id("s1", "ana", "k1")
    assert 8 <= len(first) <= 64
    assert (
        len(
            {
                first,
                *(
                    idempotency.verdict_id(*a)
                    for a in [("s1", "ana", "k2"), ("s1", "ben", "k1"), ("s2", "ana", "k1")]
                ),
            }
        )
        == 4
    )


def test_fingerprint_covers_the_reading_and_the_agree_button() -> None:
    body = _body(Edema=1)
    same = _body(Edema=1)
    assert idempotency.fingerprint_of_body(body) == idempotency.fingerprint_of_body(same)
    flipped = body.model_copy(update={"agreed_with_model": True})
    assert idempotency.fingerprint_of_body(flipped) != idempotency.fingerprint_of_body(body)
    assert idempotency.fingerprint_of_body(_body(Cardiomegaly=1)) != idempotency.fingerprint_of_body(body)
