"""Grafana dashboards as JSON, rendered from the panels of ``cxr_triage.observability``.

``python -m deploy.grafana_dashboards`` rewrites ``deploy/grafana/dashboards/*.json``, which Grafana loads
through ``deploy/grafana/provisioning`` (a test keeps the files equal to this rendering). The panels' queries
are the system view's, and a test evaluates every one of them through a real Prometheus.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import click

from cxr_triage.observability import DASHBOARDS, Dashboard, Panel

# The provisioned datasource's uid (deploy/grafana/provisioning/datasources/prometheus.yml).
DATASOURCE = {"type": "prometheus", "uid": "cxr-prometheus"}
SCHEMA_VERSION = 39
_WIDTH = {"timeseries": 12, "stat": 6, "table": 12}
_HEIGHT = {"timeseries": 8, "stat": 5, "table": 8}
_GRID_COLUMNS = 24


def dashboards_dir() -> Path:
    return Path(str(resources.files("deploy") / "grafana" / "dashboards"))


def _target(panel: Panel) -> dict[str, Any]:
    target: dict[str, Any] = {"refId": "A", "datasource": DATASOURCE, "expr": panel.expr}
    if panel.legend:
        target["legendFormat"] = panel.legend
    if panel.kind == "timeseries":
        target["range"] = True
    else:
        target.update(instant=True, format="table" if panel.kind == "table" else "time_series")
    return target


def render_panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": _HEIGHT[panel.kind], "w": _WIDTH[panel.kind], "x": x, "y": y},
        "targets": [_target(panel)],
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {},
    }


def render(dashboard: Dashboard) -> dict[str, Any]:
    panels, x, y, row_height = [], 0, 0, 0
    for panel_id, panel in enumerate(dashboard.panels, start=1):
        width = _WIDTH[panel.kind]
        if x + width > _GRID_COLUMNS:  # next row
            x, y, row_height = 0, y + row_height, 0
        panels.append(render_panel(panel, panel_id, x, y))
        x, row_height = x + width, max(row_height, _HEIGHT[panel.kind])
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": ["cxr-triage"],
        "editable": True,
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "browser",
        "annotations": {"list": []},
        "templating": {"list": []},
        "panels": panels,
    }


def render_text(dashboard: Dashboard) -> str:
    return json.dumps(render(dashboard), indent=2) + "\n"


@click.command()
def main() -> None:
    """Rewrite deploy/grafana/dashboards/*.json from cxr_triage.observability."""
    folder = dashboards_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for dashboard in DASHBOARDS:
        path = folder / f"{dashboard.uid}.json"
        path.write_text(render_text(dashboard))
        click.echo(f"wrote {path} ({len(dashboard.panels)} panels)")


if __name__ == "__main__":
    main()
