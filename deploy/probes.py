"""Health probes: each answers one question fast (well under a second) and never raises."""

from __future__ import annotations

import http.client
import logging
import socket
from typing import Any
from urllib.parse import urlsplit

from cxr_triage.settings import Settings

logger = logging.getLogger(__name__)


def port_open(host: str, port: int, timeout_s: float = 0.25) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def http_ok(url: str, timeout_s: float = 1.0) -> bool:
    """True if GET ``url`` (plain http) answers 200."""
    # http.client rather than httpx: httpx logs every request at INFO, which floods a polling loop.
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout_s)
    try:
        conn.request("GET", parts.path or "/")
        response = conn.getresponse()
        response.read()
        return response.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def redis_ping(settings: Settings, timeout_s: float = 0.5) -> bool:
    """True if Redis at CXR_REDIS_URL answers PING with the stack's password."""
    import redis

    from cxr_triage.redis_client import open_redis

    client = open_redis(settings, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except redis.AuthenticationError as exc:
        # Alive but refusing us: say why, or a start would only time out "not healthy".
        logger.warning(
            "Redis refused the password", extra={"redis": settings.redis_address.netloc, "error": str(exc)}
        )
        return False
    except redis.RedisError:
        return False
    finally:
        client.close()


class _QuietLibrdkafkaLog:
    """librdkafka reports every refused connection as an error; while probing that is the expected answer."""

    def log(self, level: int, msg: str, *args: Any, **kwargs: Any) -> None:
        logger.debug(msg, *args)


def kafka_admin(bootstrap: str) -> Any:
    """An AdminClient that fails fast and keeps librdkafka's connection noise out of the logs."""
    from confluent_kafka.admin import AdminClient

    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "socket.connection.setup.timeout.ms": 1000,
        "reconnect.backoff.ms": 50,
        "reconnect.backoff.max.ms": 200,
        "logger": _QuietLibrdkafkaLog(),
    }
    return AdminClient(config)


def kafka_ready(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """True if the broker answers a metadata request (``list_topics``)."""
    if not port_open(host, port):
        return False  # skip the client: it would only retry a refused connection until the timeout
    from confluent_kafka import KafkaException

    try:
        kafka_admin(f"{host}:{port}").list_topics(timeout=timeout_s)
    except KafkaException:
        return False
    return True
