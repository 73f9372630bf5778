"""The dashboards drawn without Grafana (``make dashboards``): each panel of deploy/grafana/*.json
queried over a window from a real Prometheus (its range API, as Grafana would) and drawn with
matplotlib, one PNG per dashboard in build/dashboards/.

With no ``--prometheus`` it starts the local stack (``python -m stream local``, which runs
Prometheus when it is installed), lets the simulator's traffic flow for ``--seconds``, draws, and
stops the stack. ``--prometheus URL`` draws from a running one (a ``make run`` in another shell)
over its last ``--seconds``.

``$__rate_interval`` becomes what Grafana would make of it for the local stack's 5 s scrapes and
the picture's step: the larger of four scrapes and a step plus a scrape.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream.composition import REPO_ROOT
from stream.localstack.prometheus import SCRAPE_INTERVAL_S
from stream.ops.prometheus_api import PrometheusAPI
from stream.ops.running_stack import StackError, local_stack

DASHBOARD_DIR = REPO_ROOT / "deploy" / "grafana"
OUTPUT_DIR = REPO_ROOT / "build" / "dashboards"
LEGEND_ENTRIES = 8  # more series than this: the largest ones named, the others drawn unnamed


@dataclass(frozen=True)
class PanelQueries:
    row: str
    title: str
    unit: str
    stacked: bool
    targets: tuple[tuple[str, str], ...]  # (expr, legend format)


def panels(dashboard: dict[str, Any]) -> list[PanelQueries]:
    """The dashboard's time-series panels in order, each with the row it sits under."""
    found, row = [], ""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
            continue
        defaults = panel.get("fieldConfig", {}).get("defaults", {})
        stacked = defaults.get("custom", {}).get("stacking", {}).get("mode", "none") != "none"
        targets = tuple((t["expr"], t.get("legendFormat", "")) for t in panel.get("targets", []) if t.get("expr"))
        found.append(PanelQueries(row, panel["title"], defaults.get("unit", ""), stacked, targets))
    return found


def dashboards(directory: Path = DASHBOARD_DIR) -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))}


def rate_interval(step_s: float) -> str:
    return f"{int(max(4 * SCRAPE_INTERVAL_S, step_s + SCRAPE_INTERVAL_S))}s"


def concrete(expr: str, step_s: float) -> str:
    """The query as Prometheus takes it: Grafana's variables replaced."""
    return expr.replace("$__rate_interval", rate_interval(step_s))


def legend(template: str, labels: dict[str, str]) -> str:
    if not template:
        return ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__") or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)


def _axis_label(unit: str) -> str:
    return {"ops": "per second", "reqps": "requests/s", "s": "seconds", "bytes": "MiB", "percentunit": "%"}.get(unit, "")


def _when(timestamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC)


def draw(
    title: str,
    queried: list[tuple[PanelQueries, list[tuple[str, list[float], list[float]]]]],
    path: Path,
    window: tuple[float, float],
) -> None:
    """One PNG: the panels two a line, each titled with its row; small (a palette of 64 colours)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.dates import DateFormatter
    from matplotlib.ticker import PercentFormatter

    lines = math.ceil(len(queried) / 2)
    figure, axes = plt.subplots(lines, 2, figsize=(13, 2.6 * lines), squeeze=False)
    figure.suptitle(title, fontsize=12, fontweight="bold")
    for ax in axes.flat[len(queried) :]:
        ax.set_visible(False)
    for ax, (panel, series) in zip(axes.flat, queried, strict=False):
        ax.set_title(f"{panel.row} · {panel.title}", fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
        ax.grid(True, linewidth=0.3, alpha=0.6)
        ax.xaxis.set_major_formatter(DateFormatter("%H:%M:%S"))
        scale = 1 / 2**20 if panel.unit == "bytes" else 1.0
        if panel.unit == "percentunit":
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_ylabel(_axis_label(panel.unit), fontsize=7)
        series = [s for s in series if any(not math.isnan(v) for v in s[2])]  # NaN only: nothing to draw
        if not series:
            ax.set_xlim(_when(window[0]), _when(window[1]))
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, fontsize=9, color="grey")
            continue
        ranked = sorted(series, key=lambda s: -max((v for v in s[2] if not math.isnan(v)), default=0.0))
        labels = [name if index < LEGEND_ENTRIES else None for index, (name, _, _) in enumerate(ranked)]
        if panel.stacked:  # as Grafana stacks them: on one time grid, a missing point counted 0
            grid = sorted({t for _, times, _ in ranked for t in times})
            columns = [dict(zip(times, values, strict=True)) for _, times, values in ranked]
            stacks = [[0.0 if math.isnan(c.get(t, 0.0)) else c.get(t, 0.0) * scale for t in grid] for c in columns]
            ax.stackplot([_when(t) for t in grid], stacks, labels=labels, linewidth=0.5, alpha=0.8)
        else:
            for label, (_, times, values) in zip(labels, ranked, strict=True):
                ax.plot([_when(t) for t in times], [v * scale for v in values], linewidth=1, label=label)
        ax.legend(fontsize=6, loc="upper left", ncol=2, framealpha=0.6)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=72)
    plt.close(figure)
    from PIL import Image

    with Image.open(path) as image:
        image.convert("RGB").quantize(colors=64).save(path, optimize=True)


def render_all(prometheus: PrometheusAPI, seconds: float, output: Path, step_s: float = SCRAPE_INTERVAL_S) -> list[Path]:
    """Every dashboard over the last ``seconds``, one PNG each in ``output``."""
    end = time.time()
    start = end - seconds
    written = []
    for name, dashboard in dashboards().items():
        queried = []
        for panel in panels(dashboard):
            series = []
            for expr, template in panel.targets:
                for result in prometheus.query_range(concrete(expr, step_s), start, end, step_s):
                    points = [(float(t), float(v)) for t, v in result["values"]]
                    series.append((legend(template, result["metric"]), [t for t, _ in points], [v for _, v in points]))
            queried.append((panel, series))
        path = output / f"{name}.png"
        draw(dashboard["title"], queried, path, (start, end))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stream.ops.render", description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", help="draw from this running Prometheus instead of starting the local stack")
    parser.add_argument("--seconds", type=float, default=150.0, help="the window drawn (and the traffic awaited)")
    parser.add_argument("--rate", type=float, default=200.0, help="the simulator's events/s when the stack is started")
    parser.add_argument("--output", type=Path, default=OUTPUT_DIR)
    parser.add_argument("--readme", type=Path, help="also copy the pipeline dashboard's picture here (docs/...)")
    args = parser.parse_args(argv)
    if args.prometheus:
        paths = render_all(PrometheusAPI(args.prometheus), args.seconds, args.output)
    else:
        print(f"starting the local stack; drawing after {args.seconds:.0f}s of traffic", flush=True)
        try:
            with local_stack(["--rate", str(args.rate)]) as stack:
                if stack.prometheus_url is None:
                    print("prometheus is not installed (apt-get install prometheus): nothing to draw from", file=sys.stderr)
                    return 2
                print(f"prometheus {stack.prometheus_url}", flush=True)
                time.sleep(args.seconds)
                paths = render_all(PrometheusAPI(stack.prometheus_url), args.seconds, args.output)
        except StackError as error:
            print(error, file=sys.stderr)
            return 1
    for path in paths:
        print(path)
    if args.readme:
        pipeline = args.output / "pipeline.png"
        args.readme.write_bytes(pipeline.read_bytes())
        print(args.readme)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
