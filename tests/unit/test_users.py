"""The API's user file: tokens shown once and stored hashed, atomic 0600 writes, reload on change."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from priority_queue_api.cli import users
from priority_queue_api.users import (
    Role,
    UnknownUser,
    UserDirectory,
    UserExists,
    UserStoreError,
    add_user,
    list_users,
    remove_user,
    token_digest,
    users_file,
)


def test_add_stores_only_a_hash_with_private_permissions(tmp_path: Path) -> None:
    path = users_file(tmp_path)
    issued = add_user(path, name="ana", role=Role.RADIOLOGIST)
    assert len(issued.token) >= 43  # 32 random bytes, URL-safe base64
    text = path.read_text()
    assert issued.token not in text
    assert json.loads(text)["users"]["ana"]["token_sha256"] == token_digest(issued.token)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_duplicates_rotation_removal_and_names(tmp_path: Path) -> None:
    path = users_file(tmp_path)
    first = add_user(path, name="ana", role=Role.RADIOLOGIST)
    with pytest.raises(UserExists, match="--rotate"):
        add_user(path, name="ana", role=Role.ENGINEER)
    with pytest.raises(UnknownUser):
        add_user(path, name="bob", role=Role.ENGINEER, rotate=True)
    second = add_user(path, name="ana", role=Role.RADIOLOGIST, rotate=True)
    assert second.token != first.token
    directory = UserDirectory(path)
    assert directory.authenticate(first.token) is None
    assert directory.authenticate(second.token) is not None
    for bad in ("", "Ana", "a b", "x" * 65, "../etc"):
        with pytest.raises(UserStoreError):
            add_user(path, name=bad, role=Role.PRODUCER)
    remove_user(path, name="ana")
    assert list_users(path) == []
    with pytest.raises(UnknownUser):
        remove_user(path, name="ana")


def test_directory_reloads_on_change_and_keeps_the_last_good_file(tmp_path: Path) -> None:
    path = users_file(tmp_path)
    directory = UserDirectory(path)
    assert directory.authenticate("anything") is None  # no file yet: nobody
    token = add_user(path, name="ana", role=Role.RADIOLOGIST).token
    user = directory.authenticate(token)
    assert user is not None and (user.name, user.role) == ("ana", Role.RADIOLOGIST)
    path.write_text("{broken")
    os.utime(path, ns=(1, 1))
    assert directory.authenticate(token) is not None
    with pytest.raises(UserStoreError, match="unreadable"):
        list_users(path)


def test_cli_prints_the_token_once_as_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_HOME", str(tmp_path))
    runner = CliRunner()
    result = runner.invoke(users, ["add", "ana", "--role", "radiologist", "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert set(body) == {"name", "role", "token"} and body["role"] == "radiologist"
    assert UserDirectory(users_file(tmp_path)).authenticate(body["token"]) is not None

    again = runner.invoke(users, ["add", "ana", "--role", "radiologist"])
    assert again.exit_code != 0 and "exists" in again.output
    rotated = runner.invoke(users, ["add", "ana", "--role", "radiologist", "--rotate"])
    assert rotated.exit_code == 0 and "shown only now" in rotated.output
    listed = runner.invoke(users, ["list", "--json"])
    assert json.loads(listed.output) == [{"name": "ana", "role": "radiologist"}]
    assert body["token"] not in listed.output
    assert runner.invoke(users, ["add", "bob", "--role", "boss"]).exit_code != 0
