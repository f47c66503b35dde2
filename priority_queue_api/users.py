"""API users and their bearer tokens, kept in ``$CXR_HOME/auth/users.json``.

Only the SHA-256 of a token is stored; the token itself is printed once when the user is added. The file is
rewritten atomically (temporary file, fsync, rename; mode 0600) under an exclusive lock, and the API reloads
it when it changes, so adding a user needs no restart. Users are not in Redis on purpose: Redis is a
projection that may be rebuilt, and credentials must not vanish with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from cxr_triage.fileio import atomic_write

log = logging.getLogger(__name__)

NAME_PATTERN: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
FILE_VERSION: Final = 1


class Role(StrEnum):
    RADIOLOGIST = "radiologist"
    ENGINEER = "engineer"
    PRODUCER = "producer"


class UserStoreError(Exception):
    """The user file cannot be read or changed as asked."""


class UserExists(UserStoreError):
    pass


class UnknownUser(UserStoreError):
    pass


@dataclass(frozen=True)
class User:
    name: str
    role: Role


@dataclass(frozen=True)
class IssuedToken:
    name: str
    role: Role
    token: str


def users_file(home: Path) -> Path:
    return home / "auth" / "users.json"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def _read(path: Path) -> dict[str, dict[str, Any]]:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UserStoreError(f"user file {path} is unreadable: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("users"), dict):
        raise UserStoreError(f"user file {path} has no 'users' object")
    users: dict[str, dict[str, Any]] = raw["users"]
    return users


def _write(path: Path, users: dict[str, dict[str, Any]]) -> None:
    body = json.dumps({"version": FILE_VERSION, "users": users}, indent=2, sort_keys=True) + "\n"
    atomic_write(path, body.encode(), mode=0o600)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    with open(path.parent / ".users.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def add_user(path: Path, *, name: str, role: Role, rotate: bool = False) -> IssuedToken:
    """Create ``name`` (or give it a new token with ``rotate``) and return the token, which is not stored."""
    if not NAME_PATTERN.match(name):
        raise UserStoreError(
            f"user name {name!r} must be 1-64 characters of a-z, 0-9, '.', '_', '-' (lower case first)"
        )
    token = new_token()
    now = datetime.now(UTC).isoformat(timespec="seconds")
    with _locked(path):
        users = _read(path)
        if name in users and not rotate:
            raise UserExists(f"user {name!r} exists; use --rotate to issue a new token")
        if name not in users and rotate:
            raise UnknownUser(f"user {name!r} does not exist; nothing to rotate")
        created = users.get(name, {}).get("created_at", now)
        users[name] = {"role": role.value, "token_sha256": token_digest(token), "created_at": created}
        if rotate:
            users[name]["rotated_at"] = now
        _write(path, users)
    return IssuedToken(name=name, role=role, token=token)


def remove_user(path: Path, *, name: str) -> None:
    with _locked(path):
        users = _read(path)
        if name not in users:
            raise UnknownUser(f"user {name!r} does not exist")
        del users[name]
        _write(path, users)


def list_users(path: Path) -> list[User]:
    return [User(name, Role(entry["role"])) for name, entry in sorted(_read(path).items())]


class UserDirectory:
    """Token -> user lookups for the API, reloaded whenever the file's identity (inode, mtime, size) changes.

    A file that becomes unreadable keeps the last good directory in force (and says so in the log), so a
    botched manual edit does not lock every radiologist out.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._by_digest: dict[str, User] = {}
        self._lock = threading.Lock()

    def _current_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def refresh(self) -> None:
        stamp = self._current_stamp()
        if stamp == self._stamp:
            return
        with self._lock:
            if stamp == self._stamp:
                return
            try:
                users = _read(self.path)
                by_digest = {
                    entry["token_sha256"]: User(name, Role(entry["role"])) for name, entry in users.items()
                }
            except (UserStoreError, KeyError, ValueError, TypeError) as exc:
                log.error("user file unreadable; keeping the previous users", extra={"error": str(exc)})
                self._stamp = stamp
                return
            self._by_digest = by_digest
            self._stamp = stamp
            log.info("users loaded", extra={"users": len(by_digest)})

    def authenticate(self, token: str) -> User | None:
        self.refresh()
        # A dict lookup by SHA-256 digest: timing reveals nothing usable about a token.
        return self._by_digest.get(token_digest(token))
