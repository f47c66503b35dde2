"""Instant queries and the alert list, from Prometheus's HTTP API (for the system view)."""

from __future__ import annotations

import math
from typing import Any

import httpx

_TIMEOUT_S = 5.0


class PrometheusUnavailable(RuntimeError):
    """Prometheus did not answer, or answered with something that is not its API."""


class QueryFailed(ValueError):
    """Prometheus refused one query (the message is its error)."""


class PrometheusClient:
    def __init__(self, base_url: str, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=_TIMEOUT_S, transport=transport
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def query(self, expr: str) -> list[tuple[dict[str, str], float | None]]:
        """Each series of the instant vector: its labels and its value (None for NaN)."""
        body = await self._get("/api/v1/query", {"query": expr})
        if body.get("status") != "success":
            raise QueryFailed(str(body.get("error") or "query failed"))
        data = body.get("data") or {}
        if data.get("resultType") == "scalar":
            return [({}, _number(data["result"][1]))]
        return [
            (dict(item.get("metric") or {}), _number(item["value"][1])) for item in data.get("result", [])
        ]

    async def alerts(self) -> list[dict[str, Any]]:
        body = await self._get("/api/v1/alerts", {})
        return list((body.get("data") or {}).get("alerts", []))

    async def _get(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        try:
            response = await self._client.get(path, params=params)
        except httpx.HTTPError as exc:
            raise PrometheusUnavailable(f"Prometheus did not answer: {type(exc).__name__}") from exc
        # A bad query is a 400/422 with Prometheus's JSON error body; anything else is not Prometheus working.
        if response.status_code not in (200, 400, 422):
            raise PrometheusUnavailable(f"Prometheus answered HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError as exc:
            raise PrometheusUnavailable("Prometheus answered with something that is not JSON") from exc
        if not isinstance(body, dict):
            raise PrometheusUnavailable("Prometheus answered with something that is not its API")
        return body


def _number(text: str) -> float | None:
    value = float(text)
    return None if math.isnan(value) else value
