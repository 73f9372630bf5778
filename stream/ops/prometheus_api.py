"""A small client of Prometheus's HTTP API (``/api/v1``): instant and range queries, the rules
loaded. Enough for the dashboards' pictures and their test; not a general client."""

from __future__ import annotations

from typing import Any

import httpx


class PrometheusError(RuntimeError):
    """Prometheus refused a query (bad PromQL, a timeout), or did not answer."""


class PrometheusAPI:
    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        try:
            answer = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=self.timeout_s)
        except httpx.HTTPError as error:
            raise PrometheusError(f"{self.url}: {type(error).__name__}") from error
        body = answer.json() if answer.headers.get("content-type", "").startswith("application/json") else {}
        if answer.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"{path} {params or ''}: {body.get('error') or answer.status_code}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's series (``metric`` and ``value``); a scalar answer as one series."""
        data = self._get("query", {"query": expr, **({"time": at} if at is not None else {})})
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def query_range(self, expr: str, start: float, end: float, step_s: float) -> list[dict[str, Any]]:
        """A range query's series (``metric`` and ``values``: [[time, "value"], ...])."""
        data = self._get("query_range", {"query": expr, "start": start, "end": end, "step": step_s})
        return list(data["result"])

    def rules(self) -> list[dict[str, Any]]:
        """Every rule loaded, recording and alerting, with its health and last error."""
        return [rule for group in self._get("rules")["groups"] for rule in group["rules"]]

    def series_count(self, metric: str) -> int:
        """How many series of ``metric`` Prometheus holds now."""
        return len(self.query(f'{{__name__="{metric}"}}'))
