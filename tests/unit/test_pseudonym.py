"""Keyed pseudonyms: stable per key, different across keys and kinds, and the key kept private."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from cxr_triage.ingest.pseudonym import Pseudonymiser, load_key
from cxr_triage.settings import Settings

KEY = SecretStr("k" * 48)


def test_a_uid_becomes_a_stable_valid_uid_under_one_key() -> None:
    one = Pseudonymiser(KEY)
    uid = "1.2.826.0.1.3680043.8.498.12345"
    first = one.uid(uid)
    assert first == Pseudonymiser(KEY).uid(uid), "every producer with the key agrees"
    assert first.startswith("2.25.") and len(first) <= 64 and first.replace(".", "").isdigit()
    assert first != Pseudonymiser(SecretStr("x" * 48)).uid(uid), "another key, another pseudonym"
    assert first != one.uid(uid + "1")


def test_identifier_kinds_do_not_collide_and_never_contain_the_value() -> None:
    one = Pseudonymiser(KEY)
    as_patient, as_accession = one.token("patient_id", "12345"), one.token("accession", "12345")
    assert as_patient != as_accession and as_patient.startswith("p-") and as_accession.startswith("a-")
    assert "12345" not in as_patient + as_accession


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Pseudonymiser(SecretStr("short"))


def test_the_key_is_generated_once_into_the_state_folder_private_to_its_owner(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    key = load_key(settings)
    assert stat.S_IMODE(settings.pseudonym_key_file.stat().st_mode) == 0o600
    assert load_key(Settings(home=tmp_path)) == key, "a second start reuses it"
    assert load_key(Settings(home=tmp_path, pseudonym_key=SecretStr("e" * 40))).get_secret_value() == "e" * 40


def test_a_short_key_in_the_settings_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pseudonym key must be at least 32 bytes"):
        Settings(home=tmp_path, pseudonym_key=SecretStr("too-short"))
