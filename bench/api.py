"""``cxr-triage bench api``: latency of ``GET /worklist`` at a fixed request rate with 10,000 studies queued.

Self-contained and bounded: a private redis-server and an API process (``cxr-triage api run``) on free
loopback ports, a private key prefix and state folder, an open-loop load of ``rate`` requests per second for
``duration_s`` seconds from this process (httpx, asyncio). Latency is measured from each request's scheduled
start, so a stalled server cannot hide its backlog (no coordinated omission). Audit records go to the Kafka
of the current settings, as in production; if no broker answers they are queued and dropped, which the report
says. Results: ``docs/bench/api.json`` and ``docs/bench/api.md``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis

from cxr_triage.labels import LABELS
from cxr_triage.settings import Settings, load_settings
from cxr_triage.sla import SlaPolicy
from cxr_triage.worklist.index import index_scored_study
from cxr_triage.worklist.keys import WorklistKeys
from deploy.testing import free_ports
from priority_queue_api.users import Role, add_user, users_file

WARMUP_S = 2.0


def _free_port() -> int:
    return free_ports(1)[0]


def _wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s} s")


def _kafka_reachable(settings: Settings) -> bool:
    try:
        with socket.create_connection(settings.kafka_address, timeout=0.5):
            return True
    except OSError:
        return False


def load_studies(client: redis.Redis, keys: WorklistKeys, n: int, *, seed: int = 1) -> None:
    """``n`` scored studies as a worker writes them, received over the last 30 hours."""
    rng = np.random.default_rng(seed)
    policy = SlaPolicy()
    now = datetime.now(UTC)
    for start in range(0, n, 500):
        with client.pipeline(transaction=False) as pipe:
            for i in range(start, min(start + 500, n)):
                study_id = f"bench-{i:06d}"
                probabilities = {
                    label: round(float(p), 4) for label, p in zip(LABELS, rng.random(14), strict=True)
                }
                priority = float(rng.random())
                tier = policy.tier_for(priority)  # as a model without tier thresholds of its own files it
                received = now - timedelta(seconds=float(rng.uniform(0, 30 * 3600)))
                pipe.hset(
                    keys.study(study_id),
                    mapping={
                        "study_id": study_id,
                        "priority": repr(priority),
                        "probabilities": json.dumps(probabilities),
                        "model_name": "cxr_classifier",
                        "model_version": "1",
                        "received_at": received.isoformat(),
                        "scored_at": (received + timedelta(seconds=0.4)).isoformat(),
                        "image_uri": "file:///nowhere",
                        "content_type": "image/png",
                        "sha256": "0" * 64,
                        "tier": tier.value,
                    },
                )
                index_scored_study(
                    pipe,
                    keys=keys,
                    policy=policy,
                    study_id=study_id,
                    priority=priority,
                    tier=tier,
                    received_at=received,
                )
            pipe.execute()


async def _drive(url: str, token: str, *, rate: float, duration_s: float, limit: int) -> dict[str, Any]:
    total = int(rate * (duration_s + WARMUP_S))
    # The load generator's own full collections would show up as server latency.
    gc.collect()
    gc.freeze()
    latencies: list[tuple[float, float]] = []  # (scheduled offset, latency)
    statuses: dict[str, int] = {}
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=10.0) as client:

        async def one(scheduled: float, offset: float) -> None:
            try:
                response = await client.get("/worklist", params={"limit": limit})
                key = str(response.status_code)
            except httpx.HTTPError as exc:
                key = type(exc).__name__
            statuses[key] = statuses.get(key, 0) + 1
            latencies.append((offset, time.perf_counter() - scheduled))

        start = time.perf_counter() + 0.05
        tasks = []
        for i in range(total):
            offset = i / rate
            delay = start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(start + offset, offset)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    measured = np.array([lat for offset, lat in latencies if offset >= WARMUP_S]) * 1000.0
    return {
        "requests": len(measured),
        "warmup_requests": total - len(measured),
        "achieved_rate_per_s": round(total / elapsed, 1),
        "statuses": statuses,
        "p50_ms": round(float(np.percentile(measured, 50)), 2),
        "p90_ms": round(float(np.percentile(measured, 90)), 2),
        "p99_ms": round(float(np.percentile(measured, 99)), 2),
        "max_ms": round(float(measured.max()), 2),
        "mean_ms": round(float(measured.mean()), 2),
    }


def run_api_bench(
    *,
    studies: int = 10_000,
    rate: float = 200.0,
    duration_s: float = 15.0,
    limit: int = 50,
    out_dir: Path | None = Path("docs/bench"),
) -> dict[str, Any]:
    """Run the benchmark and return (and write) its report."""
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise RuntimeError("redis-server is not installed (make setup)")
    settings = load_settings()
    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as tmp:
        home = Path(tmp)
        redis_port, api_port = _free_port(), _free_port()
        redis_proc = subprocess.Popen(
            [redis_server, "--bind", "127.0.0.1", "--port", str(redis_port), "--dir", tmp, "--save", ""],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        api_proc: subprocess.Popen[bytes] | None = None
        try:
            client = redis.Redis(port=redis_port, decode_responses=True)
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            keys = WorklistKeys(f"bench-{uuid.uuid4().hex[:8]}")
            started = time.perf_counter()
            load_studies(client, keys, studies)
            load_s = time.perf_counter() - started
            token = add_user(users_file(home), name="bench", role=Role.ENGINEER).token
            env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")} | {
                "CXR_HOME": str(home),
                "CXR_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                "CXR_REDIS_KEY_PREFIX": keys.prefix,
                "CXR_API_PORT": str(api_port),
                "CXR_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
                "CXR_LOG_LEVEL": "WARNING",
            }
            with open(home / "api.log", "wb") as log:
                api_proc = subprocess.Popen(
                    [sys.executable, "-m", "cxr_triage", "api", "run"], env=env, stdout=log, stderr=log
                )
            url = f"http://127.0.0.1:{api_port}"
            _wait_http(f"{url}/healthz", 30)
            result = asyncio.run(_drive(url, token, rate=rate, duration_s=duration_s, limit=limit))
        finally:
            if api_proc is not None:
                api_proc.terminate()
                api_proc.wait(timeout=30)
            redis_proc.terminate()
            redis_proc.wait(timeout=10)
    report = {
        "benchmark": "GET /worklist",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "studies_queued": studies,
        "page_limit": limit,
        "target_rate_per_s": rate,
        "duration_s": duration_s,
        "load_seconds": round(load_s, 2),
        "audit_to_kafka": _kafka_reachable(settings),
        "target_p99_ms": 20.0,
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "machine": platform.machine(),
            # Other work on the machine skews the tail: say how busy it was.
            "load_average_1m_5m_15m": [round(x, 2) for x in os.getloadavg()],
        },
        **result,
    }
    report["meets_target"] = report["p99_ms"] <= 20.0 and set(report["statuses"]) == {"200"}
    if out_dir is not None:
        write_report(report, out_dir)
    return report


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "api.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Worklist API benchmark",
        "",
        f"`GET /worklist?limit={report['page_limit']}` with {report['studies_queued']:,} unread studies, "
        f"open-loop {report['target_rate_per_s']:.0f} requests/s for {report['duration_s']:.0f} s on 127.0.0.1 "
        f"(after {WARMUP_S:.0f} s of warm-up), one API process, client on the same machine "
        f"({report['host']['cpus']} CPUs, load average {report['host']['load_average_1m_5m_15m']} at the end). Generated by `cxr-triage bench api` on {report['at']}.",
        "",
        "| requests | achieved rate | p50 | p90 | p99 | max | statuses | target p99 ≤ 20 ms |",
        "|---|---|---|---|---|---|---|---|",
        f"| {report['requests']} | {report['achieved_rate_per_s']}/s | {report['p50_ms']} ms | "
        f"{report['p90_ms']} ms | {report['p99_ms']} ms | {report['max_ms']} ms | "
        f"{', '.join(f'{k}: {v}' for k, v in sorted(report['statuses'].items()))} | "
        f"{'met' if report['meets_target'] else 'NOT met'} |",
        "",
        f"Audit records to Kafka: {'delivered to the broker of the current settings' if report['audit_to_kafka'] else 'no broker answered (queued, then dropped)'}.",
        "",
    ]
    (out_dir / "api.md").write_text("\n".join(lines))
