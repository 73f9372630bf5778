"""The dashboards and rules against the real thing: the local stack (``cashback local``, as ``make
run`` starts it) with the simulator's traffic and Prometheus, which the stack starts with
deploy/prometheus/rules.yml.

What is checked, precisely:

- Prometheus loaded every rule of rules.yml (/api/v1/rules, by name) and the banner says so; every
  rule has been evaluated without error (health "ok");
- every query of every panel of deploy/grafana/*.json (``$__rate_interval`` made concrete as the
  renderer does) returns at least one series. A series may hold NaN: the latency panels do until
  the sink observes ``cashback_ledger_latency_seconds`` (its buckets exist at 0, their quantile is
  NaN);
- every recording rule's series exists;
- every alert expression evaluates without error, and every metric it names has series in
  Prometheus. An alert's expression is empty by design while all is well, so this proves the
  names and the jobs are right, not that the condition would fire (the promtool unit tests do that);
- no alert on the processes' health (down, restarting, retrying, without offers) is pending or
  firing in the healthy stack: none of them is a false alarm.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream.ops.prometheus_api import PrometheusAPI
from stream.ops.render import concrete, dashboards, panels
from stream.ops.running_stack import RunningStack, local_stack
from tests.integration.required_tools import required_program

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
RULES = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus" / "rules.yml").read_text())["groups"]
STEP_S = 5.0  # the local stack's scrape interval: $__rate_interval becomes 20s

# PromQL words that are not metric names.
_KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (functions, keywords, labels and durations left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    names = set()
    for found in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[found.end() :].lstrip().startswith("(") or found.group(0).lower() in _KEYWORDS:
            continue
        names.add(found.group(0))
    return names


def test_metric_names_finds_the_selected_metrics() -> None:
    expr = 'sum by (le) (rate(a_bucket{le="1.0"}[5m])) / on () group_left () b offset 15m > 0.01 and absent(up{job="x"})'
    assert metric_names(expr) == {"a_bucket", "b", "up"}
    assert metric_names("cashback:x:rate5m > (14.4 * 0.01)") == {"cashback:x:rate5m"}


def eventually(check: Callable[[], list[str]], timeout_s: float, what: str) -> None:
    """Wait until ``check`` returns no problem; fail with the last ones."""
    deadline = time.monotonic() + timeout_s
    problems = check()
    while problems and time.monotonic() < deadline:
        time.sleep(3)
        problems = check()
    assert not problems, f"{what} after {timeout_s:.0f}s:\n  " + "\n  ".join(problems)


@pytest.fixture(scope="module")
def stack() -> Any:
    required_program("prometheus")
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")}
    with local_stack(["--rate", "300"], env=env) as running:
        yield running


def test_the_stack_runs_prometheus_with_every_rule_loaded(stack: RunningStack) -> None:
    assert stack.prometheus_url, stack.text()[-2000:]
    prometheus = PrometheusAPI(stack.prometheus_url)
    names = {rule.get("alert") or rule["record"] for group in RULES for rule in group["rules"]}
    alerts = sum(1 for group in RULES for rule in group["rules"] if "alert" in rule)
    assert {rule["name"] for rule in prometheus.rules()} == names
    assert f"{len(names)} rules ({alerts} alerts) from deploy/prometheus/rules.yml" in stack.text()
    assert "deploy/grafana/*.json" in stack.text()

    def unhealthy() -> list[str]:
        return [
            f"{rule['name']}: {rule['health']} {rule.get('lastError', '')}"
            for rule in prometheus.rules()
            if rule["health"] != "ok"
        ]

    eventually(unhealthy, 60, "rules not evaluated cleanly")


def test_every_panel_query_and_recorded_series_returns_series(stack: RunningStack) -> None:
    assert stack.prometheus_url
    prometheus = PrometheusAPI(stack.prometheus_url)
    queries = [
        (f"{name}: {panel.row} / {panel.title}", concrete(expr, STEP_S))
        for name, dashboard in dashboards().items()
        for panel in panels(dashboard)
        for expr, _ in panel.targets
    ]
    queries += [(f"record {rule['record']}", rule["record"]) for group in RULES for rule in group["rules"] if "record" in rule]
    assert len(queries) > 40

    def empty() -> list[str]:
        return [f"{where}: {expr}" for where, expr in queries if not prometheus.query(expr)]

    eventually(empty, 150, "queries without a series")


def test_every_alert_evaluates_and_names_only_metrics_that_exist(stack: RunningStack) -> None:
    assert stack.prometheus_url
    prometheus = PrometheusAPI(stack.prometheus_url)
    alerts = [rule for group in RULES for rule in group["rules"] if "alert" in rule]
    for alert in alerts:
        prometheus.query(alert["expr"])  # raises on an error
    names = sorted({name for alert in alerts for name in metric_names(alert["expr"])})
    assert "cashback_offers_loaded" in names and "up" in names and "cashback:sink_retries:increase5m" in names

    def missing() -> list[str]:
        return [name for name in names if not prometheus.series_count(name)]

    eventually(missing, 90, "metrics named by alerts without series")


# Alerts on the processes' health: in the healthy stack, one firing or pending is a false alarm of the rules
# (a wrong job name, a selector catching another process's zeros). Alerts on what the data says (dead
# letters, conflicts, a campaign budget the demo offers spend in seconds) may rightly fire here.
HEALTH_ALERTS = (
    "CashbackWorkerDown",
    "CashbackWorkerOutOfGroup",
    "CashbackWorkerInputOrderTimeout",
    "CashbackSinkDown",
    "CashbackProcessRestarting",
    "CashbackSinkRetrying",
    "CashbackPostgresUnreachable",
    "CashbackWorkerWithoutOffers",
    "CashbackWorkerOffersStale",
    "CashbackReconciliationStale",
)


def test_no_health_alert_is_pending_or_firing_in_a_healthy_stack(stack: RunningStack) -> None:
    assert stack.prometheus_url
    prometheus = PrometheusAPI(stack.prometheus_url)
    alerting = prometheus.query(f'ALERTS{{alertname=~"{"|".join(HEALTH_ALERTS)}"}}')
    assert not alerting, [(a["metric"]["alertname"], a["metric"].get("alertstate"), a["metric"]) for a in alerting]
