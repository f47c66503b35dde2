"""Debian's redis-server in the foreground, append-only file under ``$CXR_HOME/redis``, password required."""

from __future__ import annotations

import logging
import secrets
import shutil
import sys
from pathlib import Path

from pydantic import SecretStr

from cxr_triage.fileio import atomic_write, create_once
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


def ensure_password(settings: Settings) -> SecretStr:
    """The password Redis requires: CXR_REDIS_PASSWORD, else the state folder's, generated on first use."""
    existing = settings.redis_auth()
    if existing is not None:
        return existing
    settings.secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if create_once(settings.redis_password_file, (secrets.token_urlsafe(32) + "\n").encode(), mode=0o600):
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
