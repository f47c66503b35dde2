"""Prometheus configuration, alert rules and Grafana dashboards, checked offline with promtool and by reading them.

Whether every panel returns data on a real stack is ``tests/integration/test_observability_stack.py``.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cxr_triage.observability import DASHBOARDS
from cxr_triage.settings import Settings
from deploy import grafana_dashboards, prometheus_server
from stream_processors.config import ProcessorSettings

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "rules" / "cxr-alerts.yml"
RULE_TESTS = PROMETHEUS / "tests" / "cxr-alerts.test.yml"
GRAFANA = ROOT / "deploy" / "grafana"
OPERATIONS_DOC = ROOT / "docs" / "operations.md"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120, check=False)


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_accepts_the_rules_and_their_unit_tests_pass() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_promtool_test_rules_fails_when_an_alert_does_not_fire(tmp_path: Path) -> None:
    # The unit tests can fail: with the SLA alert's comparison turned around, its test must catch it.
    broken = RULES.read_text().replace(
        '> on (tier) cxr_worklist_sla_seconds{tier="critical"}',
        '< on (tier) cxr_worklist_sla_seconds{tier="critical"}',
    )
    assert broken != RULES.read_text()
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "cxr-alerts.yml").write_text(broken)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "cxr-alerts.test.yml").write_text(RULE_TESTS.read_text())
    result = promtool("test", "rules", str(tmp_path / "tests" / "cxr-alerts.test.yml"))
    assert result.returncode != 0 and "CxrCriticalStudyPastSla" in result.stdout + result.stderr


def test_every_alert_has_a_unit_test_that_fires_it_and_a_runbook() -> None:
    names = {rule["alert"] for rule in alerts()}
    assert names == {
        "CxrComponentDown",
        "CxrUntrainedModelServed",
        "CxrConsumerLagGrowing",
        "CxrEndToEndLatencyHigh",
        "CxrCriticalStudyPastSla",
        "CxrDeadLettersHigh",
        "CxrOnlineAurocDrop",
        "CxrOnlineSensitivityDrop",
        "CxrDriftFlagged",
    }
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert fired == names
    headings = {
        re.sub(r"[^a-z0-9-]", "", line.lstrip("#").strip().lower().replace(" ", "-"))
        for line in OPERATIONS_DOC.read_text().splitlines()
        if line.startswith("#")
    }
    for rule in alerts():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert anchor == rule["alert"].lower() and anchor in headings, f"no section {anchor} in operations.md"


def test_model_alert_floors_are_the_retrain_triggers() -> None:
    defaults = ProcessorSettings.model_construct()
    by_name = {rule["alert"]: rule["expr"] for rule in alerts()}
    min_examples = f"cxr_online_examples >= {defaults.floor_min_examples}"
    assert f"cxr_online_auroc < {defaults.auroc_floor:.2f}" in by_name["CxrOnlineAurocDrop"]
    assert f"cxr_online_sensitivity < {defaults.sensitivity_floor:.2f}" in by_name["CxrOnlineSensitivityDrop"]
    assert (
        min_examples in by_name["CxrOnlineAurocDrop"] and min_examples in by_name["CxrOnlineSensitivityDrop"]
    )


def test_the_checked_in_local_config_is_the_rendering_of_the_defaults_and_promtool_accepts_it() -> None:
    rendered = prometheus_server.render_config(Settings.model_construct(), rule_files=["rules/*.yml"])
    assert yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text()) == rendered
    checked = promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "9 rules found" in checked.stdout


def test_the_config_up_writes_follows_the_settings(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        worker_count=2,
        worker_metrics_port=9300,
        gateway_enabled=False,
        prometheus_url="http://127.0.0.1:19999",
        prometheus_scrape_interval_s=2,
    )
    launch = prometheus_server.prepare(settings)
    config_path = tmp_path / "prometheus" / "prometheus.yml"
    config = yaml.safe_load(config_path.read_text())
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert jobs["cxr-worker"] == ["127.0.0.1:9300", "127.0.0.1:9301"]
    assert "cxr-gateway" not in jobs and jobs["triton"] == ["127.0.0.1:18002"]
    assert config["global"]["scrape_interval"] == "2s"
    assert "--web.listen-address=127.0.0.1:19999" in launch.argv
    checked = promtool("check", "config", str(config_path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_prometheus_url_that_is_not_one_is_refused(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, prometheus_url="not a url")
    with pytest.raises(prometheus_server.PrometheusSetupError, match="CXR_PROMETHEUS_URL"):
        prometheus_server.prepare(settings)


def test_dashboard_files_are_the_rendering_of_the_panels_and_use_the_provisioned_datasource() -> None:
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "cxr.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    files = sorted(p.name for p in (GRAFANA / "dashboards").glob("*.json"))
    assert files == sorted(f"{d.uid}.json" for d in DASHBOARDS)
    for dashboard in DASHBOARDS:
        text = (GRAFANA / "dashboards" / f"{dashboard.uid}.json").read_text()
        assert text == grafana_dashboards.render_text(dashboard), "run python -m deploy.grafana_dashboards"
        body = json.loads(text)
        assert [p["title"] for p in body["panels"]] == [p.title for p in dashboard.panels]
        assert len({p["id"] for p in body["panels"]}) == len(body["panels"])
        cells: set[tuple[int, int]] = set()
        for panel in body["panels"]:
            assert panel["datasource"]["uid"] == uid and panel["targets"][0]["datasource"]["uid"] == uid
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24
            mine = {
                (x, y)
                for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])
            }
            assert not mine & cells, f"{panel['title']} overlaps another panel"
            cells |= mine


def test_promtool_parses_every_panel_query(tmp_path: Path) -> None:
    # promtool has no offline query parser of its own, but it parses every rule's expression: each panel's
    # query as a recording rule is checked exactly as Prometheus would parse it.
    rules = {
        "groups": [
            {
                "name": dashboard.uid,
                "rules": [{"record": f"panel:{i}", "expr": p.expr} for i, p in enumerate(dashboard.panels)],
            }
            for dashboard in DASHBOARDS
        ]
    }
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text(
        yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "a:b", "expr": "sum(("}]}]})
    )
    assert promtool("check", "rules", str(broken)).returncode != 0
