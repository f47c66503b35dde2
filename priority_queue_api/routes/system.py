"""The system view: the Grafana dashboards' figures and firing alerts, for people without Grafana."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request

from cxr_triage.observability import DASHBOARDS, Dashboard, Panel
from priority_queue_api.deps import Viewer
from priority_queue_api.errors import MonitoringUnavailable, error_responses
from priority_queue_api.models import AlertPublic, DashboardPublic, PanelPublic, SeriesPublic, SystemPublic
from priority_queue_api.prometheus_query import PrometheusClient, PrometheusUnavailable, QueryFailed

router = APIRouter(tags=["operations"])


@router.get("/system", response_model=SystemPublic, responses=error_responses(401, 403))
async def system(user: Viewer, request: Request) -> SystemPublic:
    """Every dashboard panel evaluated now, and the alerts pending or firing (503 if Prometheus is down)."""
    settings = request.app.state.settings
    client = PrometheusClient(settings.prometheus_url)
    try:
        dashboards = [await _dashboard(client, dashboard) for dashboard in DASHBOARDS]
        alerts = [_alert(raw) for raw in await client.alerts()]
    except PrometheusUnavailable as exc:
        raise MonitoringUnavailable(
            f"{exc}: is it running at CXR_PROMETHEUS_URL? (`cxr-triage up --observability` starts one)"
        ) from exc
    finally:
        await client.aclose()
    return SystemPublic(evaluated_at=datetime.now(UTC), dashboards=dashboards, alerts=alerts)


async def _dashboard(client: PrometheusClient, dashboard: Dashboard) -> DashboardPublic:
    panels = await asyncio.gather(*(_panel(client, panel) for panel in dashboard.panels))
    return DashboardPublic(uid=dashboard.uid, title=dashboard.title, panels=list(panels))


async def _panel(client: PrometheusClient, panel: Panel) -> PanelPublic:
    try:
        rows = await client.query(panel.expr)
    except QueryFailed as exc:
        return PanelPublic(title=panel.title, unit=panel.unit, expr=panel.expr, series=[], error=str(exc))
    series = [SeriesPublic(labels=labels, value=value) for labels, value in rows]
    return PanelPublic(title=panel.title, unit=panel.unit, expr=panel.expr, series=series)


def _alert(raw: dict[str, Any]) -> AlertPublic:
    labels, annotations = raw.get("labels") or {}, raw.get("annotations") or {}
    return AlertPublic(
        name=str(labels.get("alertname", "")),
        state=str(raw.get("state", "")),
        severity=str(labels.get("severity", "")),
        summary=str(annotations.get("summary", "")),
        since=raw.get("activeAt"),
    )
