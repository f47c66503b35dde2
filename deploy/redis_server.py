"""Debian's redis-server in the foreground, append-only file under ``$CXR_HOME/redis``."""

from __future__ import annotations

import shutil
from pathlib import Path

from cxr_triage.settings import Settings
from deploy.spec import Launch, SetupError

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


def prepare(settings: Settings) -> Launch:
    data_dir(settings).mkdir(parents=True, exist_ok=True)
    argv = [
        redis_binary(),
        "--bind",
        settings.host,
        "--port",
        str(settings.redis_port),
        # The worklist is a projection that can be rebuilt from Kafka, but a restart should not lose it:
        # AOF, fsync every second, no RDB snapshots.
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--dir",
        str(data_dir(settings)),
        "--daemonize",
        "no",
        "--logfile",
        "",
    ]
    return Launch(argv=argv, cwd=data_dir(settings))
