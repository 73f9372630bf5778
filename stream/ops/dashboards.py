"""The Grafana dashboards as code: ``stream.ops.dashboard_panels`` built with grafana-foundation-sdk
into ``deploy/grafana/<name>.json`` (``make dashboards-json``). ``--check`` only compares: it fails
when a committed file differs from what the generator makes (the test that keeps them in step).

Every panel reads the dashboard's ``datasource`` variable, a Prometheus data source chosen on
import, so the files carry no installation's ids.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as grafana
from grafana_foundation_sdk.builders.common import StackingConfig
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import StackingMode, TimeZoneUtc
from grafana_foundation_sdk.models.dashboard import DataSourceRef

from stream.composition import REPO_ROOT
from stream.ops.dashboard_panels import DASHBOARDS, Dashboard, Panel

OUTPUT_DIR = REPO_ROOT / "deploy" / "grafana"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")


def timeseries(panel: Panel, panel_id: int) -> Timeseries:
    built = (
        Timeseries()
        .id(panel_id)
        .title(panel.title)
        .description(panel.description)
        .unit(panel.unit)
        .datasource(DATASOURCE)
        .line_width(1)
        .fill_opacity(20 if panel.stacked else 0)
    )
    if panel.stacked:
        built = built.stacking(StackingConfig().mode(StackingMode.NORMAL))
    for index, query in enumerate(panel.queries):
        target = Dataquery().expr(query.expr).ref_id(chr(ord("A") + index)).datasource(DATASOURCE)
        built = built.with_target(target.legend_format(query.legend) if query.legend else target)
    return built


def build(spec: Dashboard) -> grafana.Dashboard:
    """The SDK's dashboard for ``spec``: rows in order, two panels a line."""
    built = (
        grafana.Dashboard(spec.title)
        .uid(spec.uid)
        .description(spec.description)
        .tags(["cashback", "generated"])
        .editable()
        .timezone(TimeZoneUtc)
        .time("now-1h", "now")
        .refresh("30s")
        .with_variable(grafana.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
    )
    panel_id = 0
    for row in spec.rows:
        panel_id += 1
        built = built.with_row(grafana.Row(row.title).id(panel_id))
        for panel in row.panels:
            panel_id += 1
            built = built.with_panel(timeseries(panel, panel_id))
    return built


def render_json(spec: Dashboard) -> str:
    """The dashboard's JSON as written to deploy/grafana (sorted keys: stable diffs)."""
    return JSONEncoder(sort_keys=True, indent=2).encode(build(spec).build()) + "\n"


def stale(directory: Path = OUTPUT_DIR) -> list[str]:
    """The dashboards whose file in ``directory`` is missing or differs from the generator's."""
    return [
        spec.name
        for spec in DASHBOARDS
        if not (directory / f"{spec.name}.json").exists() or (directory / f"{spec.name}.json").read_text() != render_json(spec)
    ]


def write(directory: Path = OUTPUT_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for spec in DASHBOARDS:
        path = directory / f"{spec.name}.json"
        path.write_text(render_json(spec))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stream.ops.dashboards", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if deploy/grafana differs from the generator")
    parser.add_argument("--output", type=Path, default=OUTPUT_DIR, help="the directory of the JSON files")
    args = parser.parse_args(argv)
    if args.check:
        behind = stale(args.output)
        if behind:
            print(f"out of date in {args.output}: {', '.join(behind)} (run make dashboards-json)", file=sys.stderr)
            return 1
        return 0
    for path in write(args.output):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
