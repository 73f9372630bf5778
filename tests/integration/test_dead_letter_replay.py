"""Replaying dead letters once their cause is fixed, against the real broker and Postgres: the
operator's case of a bug in the rules. The matcher dead-letters an event the rules raised on
(``processing_error``) and goes on; the purchase earns nothing until the fix is deployed and the
dead letter replayed (``cashback dead-letters replay``), and a second replay changes nothing."""

from __future__ import annotations

import uuid

import pytest

from tests.factories import card_record
from tests.integration.conftest import REPO_ROOT, running_pipeline, wait_until
from tests.integration.test_end_to_end import balance, balance_line, publish_records, wait_for_balance

pytestmark = pytest.mark.integration


def test_a_dead_letter_replayed_once_its_cause_is_fixed_is_decided_once(request, kafka_bootstrap, postgres_url, work_dir) -> None:  # type: ignore[no-untyped-def]
    offers = REPO_ROOT / "tests" / "integration" / "offers.yaml"
    with running_pipeline(request, kafka_bootstrap, postgres_url, work_dir, "replay", offers) as (processes, base_url):
        account = f"replay-{uuid.uuid4().hex[:6]}"
        port = {"METRICS_PORT": str(processes.metrics_ports["worker"])}
        processes.stop("worker")  # started again with a bug in its rules
        processes.start(
            "worker", "worker", env={**port, "FAIL_DECIDING": f"{account}-bug"}, module="tests.integration.failing_worker"
        )
        publish_records(
            processes.env,
            [
                card_record(
                    "AUTHORIZATION", 10_000, account_id=account, transaction_ref=f"{account}-{ref}", event_id=f"{account}-{ref}"
                )
                for ref in ("bug", "ok")
            ],
        )
        wait_for_balance(base_url, account, balance_line(pending_minor=500))  # the other purchase is decided
        shown = processes.cli("dead-letters")
        assert "processing_error" in shown and "ZeroDivisionError" in shown

        processes.stop("worker")  # the fix deployed
        processes.start("worker", "worker", env=port)
        dry = processes.cli("dead-letters", "replay", "--reason", "processing_error", "--dry-run")
        assert dry.splitlines()[-1] == "1 dead letters would be replayed", dry
        replayed = processes.cli("dead-letters", "replay", "--reason", "processing_error", "--reason", "invalid_mcc")
        assert replayed.splitlines()[-1] == "1 dead letters replayed", replayed
        wait_for_balance(base_url, account, balance_line(pending_minor=1_000))

        again = processes.cli("dead-letters", "replay", "--reason", "processing_error")
        assert again.splitlines()[-1] == "1 dead letters replayed", again  # the dead letter stays where it was
        wait_until(lambda: processes.consumed(outcome="duplicate") >= 1, 60, "the replayed event to be found decided")
        assert balance(base_url, account) == balance_line(pending_minor=1_000)
