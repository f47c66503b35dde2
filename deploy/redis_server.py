"""Debian's redis-server in the foreground, append-only file under ``$CXR_HOME/redis``, password required."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import sys
from pathlib import Path

from pydantic import SecretStr

from cxr_triage.fileio import atomic_write
from cxr_triage.settings import Settings, load_settings
from deploy.spec import Launch, SetupError

logger = logging.getLogger(__name__)

DEFAULT_BINARY = Path("/usr/bin/redis-server")


class RedisSetupError(SetupError):
    """redis-server is missing."""


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found is not None:
        return found
    if DEFAULT_BINARY.is_file():
        return str(DEFAULT_BINARY)
    raise RedisSetupError("redis-server is not installed: run `make setup` (or apt-get install redis-server)")


def data_dir(settings: Settings) -> Path:
    return settings.home / "redis"


def config_file(settings: Settings) -> Path:
    return data_dir(settings) / "redis.conf"


def _create_once(path: Path, data: bytes, *, mode: int) -> bool:
    """Put ``data`` at ``path`` whole, unless it exists; True if this call created it.

    A private temporary file, then a hard link that fails if ``path`` exists: two concurrent callers never
    both win (a rename would replace the winner's password), and no reader sees a partial file.
    """
    tmp = path.with_name(f".{path.name}-{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


def ensure_password(settings: Settings) -> SecretStr:
    """The password Redis requires: CXR_REDIS_PASSWORD, else the state folder's, generated on first use."""
    existing = settings.redis_auth()
    if existing is not None:
        return existing
    settings.secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if _create_once(settings.redis_password_file, (secrets.token_urlsafe(32) + "\n").encode(), mode=0o600):
        logger.info("generated the Redis password", extra={"file": str(settings.redis_password_file)})
    password = settings.redis_auth()
    assert password is not None
    return password


def _quoted(value: str) -> str:
    """A redis.conf string argument: double quotes, with backslash escapes for what they cannot hold."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def render_config(settings: Settings, password: SecretStr) -> str:
    """redis.conf for the local server: listens at CXR_REDIS_URL's host and port, AUTH required."""
    address = settings.redis_address
    lines = [
        "# Written by `cxr-triage up` on every start (mode 0600: it holds the password); edit CXR_* instead.",
        f"bind {address.host}",
        f"port {address.port}",
        f"requirepass {_quoted(password.get_secret_value())}",
        # The worklist is a projection that can be rebuilt from Kafka, but a restart should not lose it:
        # AOF, fsync every second, no RDB snapshots.
        "appendonly yes",
        "appendfsync everysec",
        'save ""',
        f"dir {_quoted(str(data_dir(settings)))}",
        "daemonize no",
        'logfile ""',
    ]
    return "\n".join(lines) + "\n"


def prepare(settings: Settings) -> Launch:
    # The password goes into a 0600 config file, never onto the command line (`ps` and the log show argv).
    data_dir(settings).mkdir(parents=True, exist_ok=True)
    config = config_file(settings)
    atomic_write(config, render_config(settings, ensure_password(settings)).encode(), mode=0o600)
    return Launch(argv=[redis_binary(), str(config)], cwd=data_dir(settings))


def main() -> None:
    """``python -m deploy.redis_server``: make sure the password exists (containers run it as a one-shot step)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = load_settings()
    ensure_password(settings)
    sys.stdout.write(f"Redis password ready in {settings.redis_password_file}\n")


if __name__ == "__main__":
    main()
