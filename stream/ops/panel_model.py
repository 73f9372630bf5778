"""The dashboards' model (``stream.ops.dashboard_panels`` fills it): a dashboard's rows, their panels, each panel's
PromQL queries, as plain data."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    stacked: bool = False


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Dashboard:
    name: str  # the file: deploy/grafana/<name>.json
    uid: str
    title: str
    description: str
    rows: tuple[Row, ...]
