"""The site the browser tests drive: a private redis-server and Kafka broker, the API (uvicorn, in a thread)
with its users, and helpers to sign in and to read verdicts back from ``cxr.verdicts.v1``."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from playwright.sync_api import Page

from cxr_triage import topics
from cxr_triage.image_store import LocalImageStore
from cxr_triage.settings import Settings
from cxr_triage.worklist.keys import WorklistKeys
from priority_queue_api.app import create_app
from priority_queue_api.config import ApiPolicy
from tests.integration.api_support import api_settings, make_users, serve
from tests.integration.conftest import REDIS_PASSWORD, _spawn_redis, free_port, wait_for_port
from tests.integration.kafka_support import KafkaBroker, shared_jars, start_kafka


@dataclass
class Site:
    url: str
    tokens: dict[str, str]
    kafka: KafkaBroker
    redis: redis.Redis
    keys: WorklistKeys
    settings: Settings

    @property
    def store(self) -> LocalImageStore:
        return LocalImageStore(self.settings.image_store_dir)


@contextlib.contextmanager
def running_site(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Site]:
    home = tmp_path_factory.mktemp(name)
    jars = shared_jars(tmp_path_factory.getbasetemp())
    port = free_port()
    redis_proc = _spawn_redis(port, home)
    try:
        wait_for_port(port)
        with start_kafka(home / "kafka-home", jars) as kafka:
            keys = WorklistKeys(f"web{uuid.uuid4().hex[:6]}")
            settings = api_settings(
                home / "api", port, keys.prefix, kafka_port=kafka.settings.kafka_address.port
            )
            tokens = make_users(settings.home)
            r = redis.Redis(port=port, password=REDIS_PASSWORD, decode_responses=True)
            with serve(create_app(settings, policy=ApiPolicy(verdict_timeout_s=10.0))) as url:
                yield Site(url, tokens, kafka, r, keys, settings)
    finally:
        redis_proc.terminate()
        redis_proc.wait(timeout=10)


def sign_in(page: Page, site: Site, user: str = "rad", query: str = "") -> None:
    """From the keyboard: type the token, Enter."""
    page.goto(f"{site.url}/{query}")
    page.fill("#token", site.tokens[user])
    page.keyboard.press("Enter")
    page.locator("#who").filter(has_text=f"({'engineer' if user == 'eng' else 'radiologist'})").wait_for()


def verdict_of(site: Site, study_id: str) -> dict[str, Any]:
    """The one verdict event of ``study_id`` on ``cxr.verdicts.v1`` (waits for it)."""

    def mine(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in found if e["study_id"] == study_id]

    events = mine(site.kafka.read(topics.VERDICTS, lambda found: bool(mine(found))))
    assert len(events) == 1, events
    return events[0]
