"""Every Grafana panel proven on real data: the stack with Prometheus (``up --observability``), real traffic
(studies, verdicts, a malformed event), then each panel's query of the provisioned dashboard JSON evaluated
through Prometheus's HTTP API must parse and return data. The alert rules are loaded and evaluated, the API's
system view shows the same figures, and ``status --json`` lists Prometheus."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from confluent_kafka import Producer

from cxr_triage import topics
from cxr_triage.labels import LABELS
from deploy.testing import stack_env
from producers.sample_images import write_samples
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
STUDIES = 12  # read by a radiologist
# Drift compares at least 100 inputs with the reference (DriftThresholds.min_window): these are scored, unread.
BACKGROUND = 100
T = TypeVar("T")


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("observed")
    env = stack_env(home, worker_count=1, skip_model_init=False, feedback_loop=True, gateway=True)
    env.update(
        {
            "CXR_OBSERVABILITY_ENABLED": "true",
            "CXR_PROMETHEUS_SCRAPE_INTERVAL_S": "2",
            "CXR_API_MONITOR_INTERVAL_S": "1",
            "CXR_INITIAL_MODEL_INPUT_SIZE": "64",
            "CXR_KAFKA_PARTITIONS": "2",
            # Online metrics and drift on a handful of reads; no retraining in this test.
            "CXR_METRICS_INTERVAL_S": "2",
            "CXR_DRIFT_INTERVAL_S": "2",
            "CXR_DRIFT_REFERENCE_SIZE": "10",
            "CXR_DRIFT_WINDOW_SIZE": str(BACKGROUND),
            "CXR_RETRAIN_MIN_LABELS": "100000",
            "CXR_RETRAIN_ON_DRIFT": "false",
        }
    )
    with Stack(home=home, env=env).running() as stack:
        yield stack


def wait_for(what: str, check: Callable[[], T | None], timeout_s: float) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(1.0)


def query(prometheus: str, expr: str) -> dict[str, Any]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    body: dict[str, Any] = response.json()
    assert response.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    return body


def panels() -> list[tuple[str, str]]:
    found = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                found.append((f"{path.stem}: {panel['title']}", target["expr"]))
    return found


def drive_traffic(stack: Stack, tmp_path: Path) -> None:
    """Studies through the producer, a verdict on the first ones (half normal), and one malformed study event."""
    images = write_samples(tmp_path / "images", n=STUDIES + BACKGROUND)
    produced = json.loads(stack.cli("produce", "--json", *map(str, images[:STUDIES])).stdout)
    assert produced["n_published"] == STUDIES
    background = json.loads(stack.cli("produce", "--json", *map(str, images[STUDIES:])).stdout)
    assert background["n_published"] == BACKGROUND
    garbage = Producer({"bootstrap.servers": stack.env["CXR_KAFKA_BOOTSTRAP_SERVERS"]})
    garbage.produce(topics.STUDIES, key=b"not-a-study", value=b"{this is not an event")
    assert garbage.flush(10) == 0

    token = json.loads(stack.cli("users", "add", "dr-obs", "--role", "radiologist", "--json").stdout)["token"]
    with httpx.Client(
        base_url=stack.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as api:
        wait_for(
            "every study scored",
            lambda: api.get("/worklist", params={"limit": 1}).json()["total"] == STUDIES + BACKGROUND,
            300,
        )
        claimed = api.post("/worklist/claim")
        assert claimed.status_code == 200, claimed.text
        api.post(f"/studies/{claimed.json()['study_id']}/release").raise_for_status()
        for i, entry in enumerate(produced["published"]):
            labels = {label: 0 for label in LABELS} | (
                {"No Finding": 1} if i % 2 == 0 else {"Cardiomegaly": 1, "Edema": 1}
            )
            response = api.post(
                f"/studies/{entry['study_id']}/verdict",
                json={"labels": labels, "uncertain": []},
                headers={"Idempotency-Key": str(uuid.uuid4())},
            )
            assert response.status_code == 200, response.text


def test_every_dashboard_panel_returns_data_through_prometheus(
    observed: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = observed
    status = json.loads(stack.cli("status", "--json").stdout)["components"]
    assert status["prometheus"]["state"] == "running"
    prometheus = f"http://127.0.0.1:{status['prometheus']['port']}"
    assert prometheus == stack.env["CXR_PROMETHEUS_URL"]

    # Every service is a target, and every one is up.
    def targets_up() -> dict[str, str] | None:
        active = httpx.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in active}
        return health if set(health.values()) == {"up"} else None

    jobs = wait_for("every target up", targets_up, 120)
    assert set(jobs) == {
        "cxr-api",
        "cxr-worker",
        "cxr-processors",
        "cxr-retrain",
        "cxr-rollout",
        "cxr-gateway",
        "triton",
    }

    # The alert rules are loaded, and evaluated without errors.
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == 9 and all(rule["health"] == "ok" for rule in rules), rules

    drive_traffic(stack, tmp_path)

    every = panels()
    assert len(every) == 29

    def empty_panels() -> list[str] | None:
        empty = [title for title, expr in every if not query(prometheus, expr)["data"]["result"]]
        return None if empty else empty

    try:
        wait_for("data in every panel", lambda: empty_panels() is None or None, 240)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; panels without data: {empty_panels()}") from None

    # Real values, not just series: the figures the traffic must have moved. On a loaded machine a scrape
    # may time out and a series go stale for a moment, so each figure may take a few scrapes to show.
    def value(expr: str) -> float | None:
        rows = query(prometheus, expr)["data"]["result"]
        return max(float(row["value"][1]) for row in rows) if rows else None

    def shows(expr: str, ok: Callable[[float], bool], timeout_s: float = 120) -> None:
        def check() -> bool:
            found = value(expr)
            return found is not None and ok(found)

        wait_for(f"{expr} (last: {value(expr)})", check, timeout_s)

    shows('cxr_kafka_topic_end_offset{topic="cxr.studies.v1"}', lambda v: v >= STUDIES + BACKGROUND + 1)
    shows("sum(cxr_worker_studies_scored_total)", lambda v: v >= STUDIES + BACKGROUND)
    shows("sum(cxr_worker_studies_dead_lettered_total)", lambda v: v >= 1)  # the malformed event
    shows("max(cxr_worker_end_to_end_latency_seconds_count)", lambda v: v >= STUDIES + BACKGROUND)
    shows(
        'sum(cxr_api_requests_total{route="/studies/{study_id}/verdict", status="200"})',
        lambda v: v == STUDIES,
    )
    shows("sum(cxr_worklist_unread)", lambda v: v == BACKGROUND)  # the read ones left the worklist
    shows('cxr_worklist_sla_seconds{tier="critical"}', lambda v: v > 0)
    # The processors join each verdict with its study and prediction on their own time.
    shows('max(cxr_online_examples{window="since_promotion"})', lambda v: v == STUDIES)
    shows("max(cxr_online_auroc)", lambda v: 0.0 <= v <= 1.0)
    shows("count(cxr_drift_psi)", lambda v: v >= 1)
    shows("min(cxr_worker_model_calibrated)", lambda v: v == 0)  # the untrained initial model is served

    # That untrained model is what CxrUntrainedModelServed is for: on real data it is pending (it waits 5 min).
    def untrained_alert() -> dict[str, Any] | None:
        found = httpx.get(f"{prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return next((a for a in found if a["labels"]["alertname"] == "CxrUntrainedModelServed"), None)

    alert = wait_for("CxrUntrainedModelServed pending", untrained_alert, 60)
    assert alert["state"] in ("pending", "firing") and alert["labels"]["severity"] == "warning"

    # The API's system view: the same panels, evaluated by the API through Prometheus, and the alert.
    engineer = {"Authorization": f"Bearer {stack.token()}"}
    view = httpx.get(f"{stack.api_url}/system", headers=engineer, timeout=60)
    assert view.status_code == 200, view.text
    shown = view.json()
    titles = [f"{d['uid']}: {p['title']}" for d in shown["dashboards"] for p in d["panels"]]
    assert sorted(titles) == sorted(title for title, _ in every)
    assert all(p["error"] is None and p["series"] for d in shown["dashboards"] for p in d["panels"])
    assert "CxrUntrainedModelServed" in {a["name"] for a in shown["alerts"]}
    assert httpx.get(f"{stack.api_url}/system", timeout=10).status_code == 401

    with capsys.disabled():
        print(f"\n{len(every)} panels returned data; targets {sorted(jobs)}; 9 rules healthy")
