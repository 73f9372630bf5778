"""The local stack's Prometheus (Debian's ``prometheus`` package, where installed): its configuration,
one scrape job per process, named as the alert rules expect (``deploy/prometheus/rules.yml``), the
rules loaded, and a look at what it loaded."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from stream.composition import REPO_ROOT

RULES = REPO_ROOT / "deploy" / "prometheus" / "rules.yml"
DASHBOARDS = REPO_ROOT / "deploy" / "grafana"
SCRAPE_INTERVAL_S = 5  # also how often the rules are evaluated


def job_name(process: str) -> str:
    """The scrape job of a process (worker, sink, api): what the rules select on."""
    return f"cashback-{process}"


def config_text(ports: Mapping[str, int], rules: Path | None = RULES) -> str:
    """prometheus.yml for processes serving /metrics on loopback ``ports`` (process name -> port);
    ``rules`` loaded when the file exists."""
    lines = [
        f"global: {{scrape_interval: {SCRAPE_INTERVAL_S}s, evaluation_interval: {SCRAPE_INTERVAL_S}s}}",
    ]
    if rules is not None and rules.exists():
        lines.append(f"rule_files: ['{rules}']")
    lines.append("scrape_configs:")
    for process, port in ports.items():
        lines += [
            f"  - job_name: {job_name(process)}",
            "    static_configs:",
            f"      - targets: ['127.0.0.1:{port}']",
        ]
    return "\n".join(lines) + "\n"


def command(binary: str, config: Path, port: int, storage: Path) -> list[str]:
    return [
        binary,
        f"--config.file={config}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--storage.tsdb.path={storage}",
    ]


def loaded_rules(url: str, timeout_s: float = 30.0) -> list[dict[str, object]]:
    """The rules Prometheus at ``url`` has loaded (its /api/v1/rules), once it answers; [] if it
    does not within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            answer = httpx.get(f"{url}/api/v1/rules", timeout=2)
            if answer.status_code == 200:
                return [rule for group in answer.json()["data"]["groups"] for rule in group["rules"]]
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return []
