"""`make run`'s stack (``cashback local``) starts the whole system, serves balances computed from
the simulator's stream to the tokens its banner prints (and to no one without one), and stops
cleanly on Ctrl-C with no process left behind."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
import pytest

from schemas.codec import Codec
from stream.backtest import replay
from stream.core.entries import moves_money
from stream.core.offers import OfferBook
from stream.offer_admin import load_offers_file
from stream.simulate import Scenario, generate
from tests.integration.conftest import wait_until

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
PURCHASES = 300


def accounts_with_cashback(purchases: int) -> list[str]:
    """Accounts the simulator's default stream (seed 1) gives cashback, by the back-test, the
    busiest first (its balance shows soonest)."""
    offers = OfferBook.of(load_offers_file(REPO_ROOT / "deploy" / "offers" / "example.yaml"))
    result = replay(generate(Scenario(purchases=purchases), Codec()), offers)
    activity = Counter(e.account_id for e in result.entries.values() if moves_money(e.entry_kind))
    earned = {key[0] for key, totals in result.balances().items() if totals["lifetime_earned_minor"] > 0}
    return sorted(earned, key=lambda account: (-activity[account], account))  # the busiest first


def test_local_stack_starts_serves_and_stops_cleanly() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")}
    stack = subprocess.Popen(
        [sys.executable, "-m", "stream", "local", "--rate", "300", "--purchases", str(PURCHASES), "--keep-data"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(iter(stack.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    descendants: list[psutil.Process] = []
    try:
        wait_until(
            lambda: any("local stack is up" in line for line in output),
            180,
            "the stack to start",
            observe=lambda: "".join(output[-20:]),
        )
        api = re.search(r"balance API\s+(http://127\.0\.0\.1:\d+)", "".join(output)).group(1)  # type: ignore[union-attr]
        descendants = psutil.Process(stack.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in descendants)
        for part in ("kafka.Kafka", "postgres", "stream worker", "stream sink", "stream api"):
            assert part in names, f"{part} is not running under the stack"

        banner = "".join(output)
        ops_token = re.search(r"ops token\s+(\S+)", banner).group(1)  # type: ignore[union-attr]
        operations = {"Authorization": f"Bearer {ops_token}"}
        account = accounts_with_cashback(PURCHASES)[0]
        found = wait_until(
            lambda: httpx.get(f"{api}/v1/accounts/{account}/balances", headers=operations, timeout=5).status_code == 200,
            180,
            f"a balance for {account}",
            observe=lambda: diagnosis(output),
        )
        assert found
        assert httpx.get(f"{api}/v1/accounts/{account}/balances", timeout=5).status_code == 401
        # The banner's curl line, as printed: the demo account's token reads it (200, or 404 before its first purchase).
        header, url = re.search(r'curl -H "(Authorization: Bearer \S+)" (\S+)', banner).groups()  # type: ignore[union-attr]
        name, _, value = header.partition(": ")
        assert url == f"{api}/v1/accounts/acct-000001/balances"
        assert httpx.get(url, headers={name: value}, timeout=5).status_code in (200, 404)
        assert httpx.get(f"{api}/v1/operations/ledger-conflicts", headers={name: value}, timeout=5).status_code == 403
        metrics = httpx.get(f"{api}/metrics", timeout=5).text
        assert "cashback_api_requests_total" in metrics
    finally:
        stack.send_signal(signal.SIGINT)
        try:
            code = stack.wait(timeout=90)
        except subprocess.TimeoutExpired:
            stack.kill()
            raise
        finally:
            reader.join(timeout=10)
            stack.stdout.close()  # type: ignore[union-attr]
    assert code == 0, "".join(output[-40:])
    data_dir = run_data_dir(output)
    time.sleep(1.5)  # let init reap the last children
    alive = [p for p in descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"left behind: {[' '.join(p.cmdline()) for p in alive]}"
    assert "stopped" in "".join(output[-5:])
    if data_dir is not None:
        # Its Postgres asked for a password (made for the run, mode 600), which the banner never showed.
        password_file = data_dir / "postgres" / "superuser.password"
        assert password_file.stat().st_mode & 0o777 == 0o600
        password = password_file.read_text().strip()
        assert password and password not in "".join(output)
        assert "postgresql://postgres:***@127.0.0.1:" in banner and f"(password in {password_file})" in banner
        shutil.rmtree(data_dir, ignore_errors=True)


def run_data_dir(output: list[str]) -> Path | None:
    found = re.search(r"logs and data (\S+)", "".join(output))
    return Path(found.group(1)) if found else None


def diagnosis(output: list[str]) -> str:
    """What the stack said, and the tails of its processes' logs: enough to see why it stalled."""
    lines = ["".join(output[-15:])]
    data_dir = run_data_dir(output)
    for name in ("worker", "sink", "api"):
        log = data_dir / f"{name}.log" if data_dir else None
        if log is not None and log.exists():
            lines.append(f"--- {name}.log ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-25:]))
    return "\n".join(lines)
