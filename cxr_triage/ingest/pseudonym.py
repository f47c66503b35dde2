"""Keyed pseudonyms for patient and study identifiers: the same input always maps to the same pseudonym.

Everything past the ingest (events, the worklist, logs, metrics, dead letters) sees only these. HMAC-SHA256
with a secret key: without the key nobody can test a guessed name or UID against a pseudonym, and with it
the same patient or study gets the same pseudonym on every producer of a site, so a study's late image joins
it. The key comes from ``CXR_PSEUDONYM_KEY`` or is generated once into the state folder, private to its owner.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from typing import Final, Literal

from pydantic import SecretStr

from cxr_triage.fileio import create_once
from cxr_triage.settings import Settings

logger = logging.getLogger(__name__)

IdentifierKind = Literal[
    "patient_name", "patient_id", "birth_date", "accession", "institution", "uid", "other"
]
# Each kind's own prefix: a pseudonym says what it stands for, and two kinds never share one.
_PREFIX: Final[dict[IdentifierKind, str]] = {
    "patient_name": "n",
    "patient_id": "p",
    "birth_date": "b",
    "accession": "a",
    "institution": "i",
    "uid": "u",
    "other": "o",
}
# A DICOM UID made from a 128-bit number (PS3.5 B.2): a pseudonymised UID still works as a UID downstream.
UID_ROOT: Final = "2.25."
_MIN_KEY_BYTES: Final = 32


@dataclass(frozen=True)
class Pseudonymiser:
    key: SecretStr

    def __post_init__(self) -> None:
        if len(self.key.get_secret_value().encode()) < _MIN_KEY_BYTES:
            raise ValueError(f"the pseudonym key must be at least {_MIN_KEY_BYTES} bytes")

    def _digest(self, kind: IdentifierKind, value: str) -> bytes:
        # The kind is mixed in, so that a patient id equal to an accession number gets another pseudonym.
        message = f"{kind}\x00{value.strip()}".encode()
        return hmac.new(self.key.get_secret_value().encode(), message, hashlib.sha256).digest()

    def uid(self, value: str) -> str:
        """A UID (study, series, instance) -> ``2.25.<128-bit decimal>``, at most 44 characters."""
        return UID_ROOT + str(int.from_bytes(self._digest("uid", value)[:16], "big"))

    def token(self, kind: IdentifierKind, value: str) -> str:
        """Any other identifier -> 24 hex characters, prefixed by its kind's letter (``p-``, ``a-``...)."""
        return f"{_PREFIX[kind]}-{self._digest(kind, value)[:12].hex()}"


def load_key(settings: Settings) -> SecretStr:
    """``CXR_PSEUDONYM_KEY``, else the state folder's key, generated on first use."""
    if settings.pseudonym_key is not None:
        return settings.pseudonym_key
    path = settings.pseudonym_key_file
    if not path.exists():
        settings.secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if create_once(path, (secrets.token_urlsafe(48) + "\n").encode(), mode=0o600):
            logger.info("generated the pseudonym key", extra={"file": str(path)})
    return SecretStr(path.read_text().strip())


def pseudonymiser(settings: Settings) -> Pseudonymiser:
    return Pseudonymiser(load_key(settings))
