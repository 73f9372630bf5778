"""The alert and recording rules (deploy/prometheus/rules.yml): valid for promtool, every alert
fired by a promtool unit test (deploy/prometheus/tests/), every alert documented in
docs/runbook.md with the labels and annotations an on-call engineer needs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.required_tools import required_program

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "rules.yml"
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
RUNBOOK = REPO_ROOT / "docs" / "runbook.md"


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def runbook_anchors() -> set[str]:
    """GitHub's anchors of the runbook's headings: lower case, spaces to dashes, punctuation dropped."""
    headings = re.findall(r"^#{1,6} (.+)$", RUNBOOK.read_text(), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def test_promtool_checks_the_rules() -> None:
    promtool = required_program("promtool")
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_unit_tests_pass() -> None:
    promtool = required_program("promtool")
    assert RULE_TESTS, "no promtool unit tests in deploy/prometheus/tests"
    result = subprocess.run(
        [promtool, "test", "rules", *map(str, RULE_TESTS)], capture_output=True, text=True, timeout=120, cwd=PROMETHEUS_DIR
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_in_a_unit_test() -> None:
    fired: set[str] = set()
    for path in RULE_TESTS:
        document = yaml.safe_load(path.read_text())
        assert document["rule_files"] == ["../rules.yml"], f"{path.name} tests another rule file"
        for case in document["tests"]:
            fired.update(test["alertname"] for test in case.get("alert_rule_test", []) if test.get("exp_alerts"))
    names = [alert["alert"] for alert in alerts()]
    assert len(names) == len(set(names)), "an alert name is used twice"
    assert set(names) - fired == set(), "alerts no promtool test fires"
    assert fired - set(names) == set(), "tests of alerts that do not exist"


@pytest.mark.parametrize("alert", alerts(), ids=lambda alert: alert["alert"])
def test_every_alert_has_a_severity_a_summary_and_a_runbook_section(alert: dict[str, Any]) -> None:
    assert alert["labels"]["severity"] in ("critical", "warning")
    annotations = alert["annotations"]
    assert annotations["summary"] and annotations["description"]
    page, _, anchor = annotations["runbook_url"].partition("#")
    assert page == "docs/runbook.md"
    assert anchor == alert["alert"].lower(), "the runbook section is named after the alert"
    assert anchor in runbook_anchors(), f"docs/runbook.md has no section {alert['alert']}"


def test_the_runbook_documents_no_alert_that_does_not_exist() -> None:
    names = {alert["alert"].lower() for alert in alerts()}
    sections = {anchor for anchor in runbook_anchors() if anchor.startswith("cashback")}
    assert sections <= names, f"runbook sections without an alert: {sorted(sections - names)}"


# The labels the rules aggregate by or match on: small closed sets (stream/metrics.py), never an account or a card.
BOUNDED_LABELS = {
    *("group", "topic", "partition", "stage", "reason", "event_type", "budget", "unit", "job", "instance", "le"),
    *("kind", "age"),  # reconciliation: stream.core.entries.ITEM_KINDS, stream.store.reconciliation.AGE_BUCKETS
    "beneficiary",  # payouts: stream.metrics.PAYOUT_BENEFICIARIES
}


def test_the_rules_aggregate_only_by_bounded_labels() -> None:
    for rule in rules():
        for clause in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", rule["expr"]):
            labels = {label.strip() for label in clause.split(",") if label.strip()}
            assert labels <= BOUNDED_LABELS, f"{rule.get('alert') or rule.get('record')}: {labels - BOUNDED_LABELS}"
