"""Helpers for the worklist API tests: a study written as the worker writes it, an API on real Redis, users."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
import uvicorn
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cxr_triage.labels import LABELS
from cxr_triage.settings import Settings
from cxr_triage.sla import SlaPolicy, Tier
from cxr_triage.worklist.index import index_scored_study
from cxr_triage.worklist.keys import WorklistKeys
from priority_queue_api.app import create_app
from priority_queue_api.config import ApiPolicy
from priority_queue_api.users import Role, add_user, users_file
from tests.integration.conftest import REDIS_PASSWORD, free_port, wait_for_port

KEYS = WorklistKeys("apitest")
SLA = SlaPolicy()


def put_study(
    r: redis.Redis,
    keys: WorklistKeys,
    study_id: str,
    priority: float,
    *,
    age: timedelta = timedelta(0),
    image_uri: str = "file:///nowhere",
    probabilities: dict[str, float] | None = None,
    tier: Tier | None = None,
    content_type: str = "image/png",
) -> None:
    """What the inference worker writes for a scored study, then the index call it makes.

    ``tier`` is the scoring model's choice; by default the fallback thresholds' (``SlaPolicy.tier_for``).
    """
    received = datetime.now(UTC) - age
    tier = tier or SLA.tier_for(priority)
    probabilities = probabilities or {label: round(priority / 2, 3) for label in LABELS}
    r.hset(
        keys.study(study_id),
        mapping={
            "study_id": study_id,
            "priority": str(priority),
            "probabilities": json.dumps(probabilities),
            "model_name": "cxr_classifier",
            "model_version": "1",
            "received_at": received.isoformat(),
            "scored_at": (received + timedelta(seconds=1.25)).isoformat(),
            "image_uri": image_uri,
            "content_type": content_type,
            "sha256": "0" * 64,
            "tier": tier.value,
        },
    )
    index_scored_study(
        r, keys=keys, policy=SLA, study_id=study_id, priority=priority, tier=tier, received_at=received
    )


@dataclass
class Api:
    client: TestClient
    tokens: dict[str, str]
    redis: redis.Redis
    settings: Settings

    def get(self, path: str, user: str | None = "rad", **kwargs: Any) -> Any:
        return self.client.get(path, headers=self.auth(user), **kwargs)

    def post(self, path: str, user: str | None = "rad", **kwargs: Any) -> Any:
        return self.client.post(path, headers=self.auth(user), **kwargs)

    def auth(self, user: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}


def api_settings(home: Path, redis_port: int, prefix: str, kafka_port: int | None = None) -> Settings:
    return Settings(
        home=home,
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
        redis_password=REDIS_PASSWORD,
        redis_key_prefix=prefix,
        # nothing listens there unless a test starts Kafka
        kafka_bootstrap_servers=f"127.0.0.1:{kafka_port or free_port()}",
    )


def make_users(home: Path, suffix: str = "") -> dict[str, str]:
    """Tokens by short name; the users are named ``rad{suffix}``, ``rad2{suffix}``, ``eng{suffix}``, ..."""
    path = users_file(home)
    roles = {"rad": Role.RADIOLOGIST, "rad2": Role.RADIOLOGIST, "eng": Role.ENGINEER, "prod": Role.PRODUCER}
    return {short: add_user(path, name=f"{short}{suffix}", role=role).token for short, role in roles.items()}


FAST = ApiPolicy(verdict_timeout_s=1.0, upload_timeout_s=1.0, shutdown_flush_s=0.2)


@contextlib.contextmanager
def api_on(redis_url: str, redis_port: int, home: Path, policy: ApiPolicy = FAST) -> Iterator[Api]:
    """The API app in-process (TestClient) on this Redis, with the usual users, keys and (FAST) policy."""
    settings = api_settings(home, redis_port, KEYS.prefix)
    tokens = make_users(home)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    with TestClient(create_app(settings, policy=policy)) as client:
        yield Api(client, tokens, r, settings)


@contextlib.contextmanager
def serve(app: FastAPI, *, port: int | None = None) -> Iterator[str]:
    """Run ``app`` under uvicorn on ``port`` (default: a free one) on loopback in a thread; yields its base URL."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@dataclass
class PrometheusPeer:
    url: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@contextlib.contextmanager
def prometheus_on(
    home: Path, *, targets: tuple[str, ...] = (), rule_files: tuple[str, ...] = ()
) -> Iterator[PrometheusPeer]:
    """A real Prometheus (Debian's) on a free loopback port, scraping ``targets`` (host:port) every second and
    evaluating ``rule_files``. The API's ``/system`` needs one to answer 200."""
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    jobs = [{"job_name": "cxr-api", "static_configs": [{"targets": list(targets)}]}] if targets else []
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": list(rule_files),
        "scrape_configs": jobs,
    }
    (home / "prometheus.yml").write_text(yaml.safe_dump(config))
    with (home / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={home / 'prometheus.yml'}",
                f"--storage.tsdb.path={home / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    peer = PrometheusPeer(f"http://127.0.0.1:{port}", process)
    try:
        wait_for_port(port)
        yield peer
    finally:
        if process.poll() is None:
            peer.stop()
