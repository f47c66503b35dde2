"""Idempotency keys of verdict submissions (IETF httpapi draft "The Idempotency-Key HTTP Header Field").

The client names each submission with an ``Idempotency-Key`` header (the page: one random UUID per
submission, reused by its own retries). Without one the key is derived from what was submitted, so an
identical resubmission is recognised, never from the note's text itself: only its hash.

A submission's verdict id is derived from (study, radiologist, key): a retry finds its pending event by the
key, and ``verdict_lookup`` finds that event on cxr.verdicts.v1 by the id, so it is never published twice.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Final

from cxr_triage.events import VerdictEventV1
from priority_queue_api.errors import BadRequest
from priority_queue_api.models import VerdictCreate

HEADER: Final = "Idempotency-Key"
MAX_LENGTH: Final = 128
# Visible ASCII only (no spaces, no controls): the key is stored and compared as it is sent.
_VISIBLE: Final = re.compile(rf"[\x21-\x7e]{{1,{MAX_LENGTH}}}")
DERIVED_PREFIX: Final = "derived:"


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def parse_header(raw: str | None) -> str | None:
    """The key a client sent, or None; ``BadRequest`` if it is not 1..128 visible ASCII characters.

    The draft defines the value as a structured-field string (``"..."``); a bare token is accepted too.
    """
    if raw is None:
        return None
    value = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] == '"' else raw
    if not _VISIBLE.fullmatch(value):
        raise BadRequest(
            f"{HEADER} must be 1 to {MAX_LENGTH} visible ASCII characters (no spaces), e.g. a UUID"
        )
    return value


def derived_key(study_id: str, radiologist: str, body: VerdictCreate, replaces: str | None) -> str:
    """The key of a submission sent without one: the same reading of the same study by the same radiologist,
    on top of the same earlier verdict (``replaces``), is the same submission. Taking the earlier verdict in
    means that going back to a reading one had amended away is a new amendment, not a replay of the first."""
    reading = (study_id, radiologist, dict(body.labels), list(body.uncertain), body.note or None, replaces)
    return DERIVED_PREFIX + _digest(*reading)[:48]


def verdict_id(study_id: str, radiologist: str, key: str) -> str:
    return _digest("verdict", study_id, radiologist, key)[:32]


def fingerprint(
    labels: dict[str, int], uncertain: list[str], note: str | None, agreed_with_model: bool
) -> str:
    """What a key's submissions must agree on: the reading (a retry may not change it)."""
    return _digest(dict(labels), list(uncertain), note or None, agreed_with_model)


def fingerprint_of_body(body: VerdictCreate) -> str:
    return fingerprint(dict(body.labels), list(body.uncertain), body.note, body.agreed_with_model)


def fingerprint_of_event(event: VerdictEventV1) -> str:
    return fingerprint(dict(event.labels), list(event.uncertain), event.note, event.agreed_with_model)
