"""The short chaos run (``make chaos`` at 3,000 events): every fault once while events flow, then
every message accounted for against the pure engine. The run starts its own broker and Postgres
(it restarts them), so it does not use the session's."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import pytest

from stream.localstack.chaos import FAULTS, Chaos

pytestmark = pytest.mark.integration


def test_nothing_is_lost_or_counted_twice_through_kills_restarts_and_outages() -> None:
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # the harness's clients retry through the broker restart
    work_dir = Path(tempfile.mkdtemp(prefix="cashback-chaos-"))
    work_dir.chmod(0o755)
    report = Chaos(events=3_000, seed=7, poison=10, work_dir=work_dir).run()
    print(report.table())
    print(report.line())
    happened = [what for _, what in report.timeline]
    kept = f"(the run's logs and data are kept in {work_dir})"
    assert all(f"{fault} done" in happened for fault in set(FAULTS)), (happened, kept)
    assert report.poison_total >= 10, kept
    assert report.passed(), report.line() + "\n" + report.table() + "\n" + kept
    shutil.rmtree(work_dir, ignore_errors=True)
