"""The dashboards as code: deploy/grafana/*.json is exactly what stream/ops/dashboards.py generates
(run ``make dashboards-json`` after changing a panel), every panel queries the dashboard's Prometheus
variable, and the recorded series it reads are defined in deploy/prometheus/rules.yml."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from stream.ops import dashboards
from stream.ops.dashboard_panels import DASHBOARDS
from stream.ops.render import concrete, legend, panels

REPO_ROOT = Path(__file__).resolve().parents[2]
RULES = REPO_ROOT / "deploy" / "prometheus" / "rules.yml"


def recorded_names() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


def test_the_committed_json_is_what_the_generator_makes() -> None:
    assert dashboards.stale() == [], "deploy/grafana is out of date: run make dashboards-json"
    assert sorted(p.stem for p in dashboards.OUTPUT_DIR.glob("*.json")) == sorted(d.name for d in DASHBOARDS)


def test_check_mode_sees_a_hand_edited_file(tmp_path: Path) -> None:
    dashboards.write(tmp_path)
    assert dashboards.main(["--check", "--output", str(tmp_path)]) == 0
    edited = tmp_path / "pipeline.json"
    edited.write_text(edited.read_text().replace("Consumer lag by group", "Lag"))
    assert dashboards.main(["--check", "--output", str(tmp_path)]) == 1


def test_every_panel_queries_the_prometheus_variable_with_unique_ids() -> None:
    for spec in DASHBOARDS:
        document = json.loads(dashboards.render_json(spec))
        assert document["uid"] == spec.uid
        assert [v["name"] for v in document["templating"]["list"]] == ["datasource"]
        ids = [panel["id"] for panel in document["panels"]]
        assert len(ids) == len(set(ids)), f"{spec.name}: panel ids repeat"
        for panel in document["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], f"{spec.name}: {panel['title']} has no query"
            assert all(target["datasource"]["uid"] == "${datasource}" for target in panel["targets"])


def test_recorded_series_the_panels_read_are_defined_by_the_rules() -> None:
    defined = recorded_names()
    for spec in DASHBOARDS:
        for panel in panels(json.loads(dashboards.render_json(spec))):
            for expr, _ in panel.targets:
                used = set(re.findall(r"\bcashback:[a-z0-9_:]+", expr))
                assert used <= defined, f"{panel.title}: {used - defined} not recorded in rules.yml"


def test_no_panel_groups_by_an_account_or_a_card() -> None:
    for spec in DASHBOARDS:
        for row in spec.rows:
            for panel in row.panels:
                for query in panel.queries:
                    for clause in re.findall(r"\bby \(([^)]*)\)", query.expr):
                        assert not {"account_id", "card_token", "event_id"} & {x.strip() for x in clause.split(",")}


def test_the_renderer_reads_what_grafana_would_query() -> None:
    assert concrete("rate(x[$__rate_interval])", 5) == "rate(x[20s])"
    assert concrete("rate(x[$__rate_interval])", 60) == "rate(x[65s])"
    assert legend("{{group}} {{topic}}[{{partition}}]", {"group": "g", "topic": "t", "partition": "0"}) == "g t[0]"
    assert legend("", {"__name__": "up", "job": "j"}) == "job=j"
    pipeline = panels(json.loads(dashboards.render_json(DASHBOARDS[0])))
    assert pipeline[0].row == "Throughput" and pipeline[0].stacked and pipeline[0].unit == "ops"
