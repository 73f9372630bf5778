"""The operator commands, run as a user runs them: ``python -m stream ...`` as a subprocess against
the session's real broker and Postgres. Bad input gives one clear line on stderr and exit code 2,
never a traceback; good input works. ``stream local`` pointed at existing servers publishes no
demo offers and no simulated card traffic unless told to."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.codec import Codec
from stream.composition import masked_dsn
from stream.deadletter import Stage, dead_letter
from stream.localstack.process import free_port, terminate
from stream.offer_admin import load_offers_file
from stream.producing import send_once
from stream.settings import Settings
from tests.integration.conftest import fresh_database, isolated_env, wait_until
from topics.catalogue import Topic, catalogue

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
TEST_OFFERS = REPO_ROOT / "tests" / "integration" / "offers.yaml"
SECRET = "4111111111111111"  # in a dead letter's original bytes: never printed


@pytest.fixture(scope="module")
def env(kafka_bootstrap: str, postgres_url: str, work_dir: Path) -> dict[str, str]:
    """Fresh topics (their own prefix) and a fresh database for this module."""
    log_dir = work_dir / f"cli-{uuid.uuid4().hex[:8]}"
    log_dir.mkdir()
    return isolated_env(kafka_bootstrap, postgres_url, log_dir, "cli")


def cashback(environ: dict[str, str], *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream", *args],
        env=environ,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], *fragments: str, one_line: bool = True) -> str:
    """Exit code 2, no traceback, and the message (stderr's last line) naming each fragment."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, f"exit {result.returncode}\n{output}"
    assert "Traceback" not in output, output
    lines = result.stderr.strip().splitlines()
    assert lines, "nothing on stderr"
    if one_line:
        assert len(lines) == 1, f"more than one line on stderr:\n{result.stderr}"
    for fragment in fragments:
        assert fragment in lines[-1], f"{fragment!r} not in {lines[-1]!r}"
    return lines[-1]


def topic_names(environ: dict[str, str]):  # type: ignore[no-untyped-def]
    settings = Settings.from_env(environ)
    return catalogue(settings.topic_prefix, settings.topic_partitions)


async def _records(bootstrap: str, topic: Topic) -> list[tuple[bytes, bytes | None]]:
    """Every (key, value) of a catalogue topic, in offset order per partition."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic.name, p) for p in range(topic.partitions)]
        consumer.assign(partitions)
        end = await consumer.end_offsets(partitions)
        found: list[tuple[bytes, bytes | None]] = []
        while any([await consumer.position(tp) < end[tp] for tp in partitions]):
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                found.extend((r.key, r.value) for r in records)
        return found
    finally:
        await consumer.stop()


def records(environ: dict[str, str], topic: Topic) -> list[tuple[bytes, bytes | None]]:
    return asyncio.run(_records(environ["KAFKA_BOOTSTRAP_SERVERS"], topic))


# --- offers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the message must say)."""
    folder = tmp_path_factory.mktemp("offers")
    files = {
        "invalid_field": ("offers:\n  - offer_id: bad-rate\n    name: Bad\n    rate_bps: -3\n", "'rate_bps'"),
        "broken_yaml": ("offers: [\n", "not valid YAML"),
        "no_offers_list": ("offer_id: lonely\n", "top-level 'offers:'"),
        "twice": (
            "offers:\n  - {offer_id: twin, name: A, rate_bps: 100}\n  - {offer_id: twin, name: B, rate_bps: 100}\n",
            "given twice",
        ),
    }
    made = {}
    for name, (text, says) in files.items():
        (folder / f"{name}.yaml").write_text(text)
        made[name] = (folder / f"{name}.yaml", says)
    made["missing"] = (folder / "missing.yaml", "no such file")
    made["directory"] = (folder, "is a directory")
    return made


def test_offers_check_accepts_a_valid_file(env: dict[str, str]) -> None:
    assert "2 valid offers" in ok(cashback(env, "offers", "check", str(TEST_OFFERS)))


@pytest.mark.parametrize(
    "action, kind",
    [("check", kind) for kind in ("invalid_field", "broken_yaml", "no_offers_list", "twice", "missing", "directory")]
    + [("load", "invalid_field"), ("load", "broken_yaml"), ("load", "missing")],
)
def test_offers_check_and_load_refuse_a_bad_file_in_one_line(
    env: dict[str, str], bad_files: dict[str, tuple[Path, str]], action: str, kind: str
) -> None:
    path, says = bad_files[kind]
    refused(cashback(env, "offers", action, str(path)), str(path), says)


def test_backtest_refuses_a_bad_offers_file(env: dict[str, str], bad_files: dict[str, tuple[Path, str]]) -> None:
    path, says = bad_files["invalid_field"]
    refused(cashback(env, "backtest", "--offers", str(path), "--purchases", "10"), says)


def test_offers_load_publishes_and_remove_tombstones(env: dict[str, str]) -> None:
    wanted = [o.offer_id for o in load_offers_file(TEST_OFFERS)]
    out = ok(cashback(env, "offers", "load", str(TEST_OFFERS)))
    assert f"published {len(wanted)} offers" in out
    topic = topic_names(env).offers
    published = records(env, topic)
    assert sorted(k.decode() for k, v in published if v is not None) == sorted(wanted)

    assert f"removed {wanted[0]}" in ok(cashback(env, "offers", "remove", wanted[0]))
    last = {k.decode(): v for k, v in records(env, topic)}
    assert last[wanted[0]] is None and last[wanted[1]] is not None


# --- the other commands' good input ---------------------------------------------------------------


def test_topics_migrate_accounts_simulate_and_config_work(env: dict[str, str]) -> None:
    ok(cashback(env, "topics"))
    ok(cashback(env, "migrate"))
    assert "none (up to date)" in ok(cashback(env, "migrate"))
    assert "segments vip" in ok(cashback(env, "accounts", "segments", "acct-cli-1", "vip"))
    assert "activated" in ok(cashback(env, "accounts", "activate", "acct-cli-1", "grocery-5"))
    assert "deactivated" in ok(cashback(env, "accounts", "deactivate", "acct-cli-1", "grocery-5"))
    ok(cashback(env, "simulate", "--purchases", "3", "--accounts", "2", "--rate", "0", "--quiet"))
    assert "KAFKA_BOOTSTRAP_SERVERS" in ok(cashback(env, "config"))


# --- dead letters ---------------------------------------------------------------------------------


def test_dead_letters_lists_where_and_why_never_the_bytes(env: dict[str, str]) -> None:
    ok(cashback(env, "topics"))
    names = topic_names(env)
    codec, settings = Codec(), Settings.from_env(env)
    letters = [
        ("unknown_currency", "field currency: not an ISO 4217 code", names.authorizations.name, 1, 17),
        ("card_number_detected", "field merchant_name: looks like a card number", names.settlements.name, 2, 5),
        ("negative_amount", "field amount_minor: below 0", names.authorizations.name, 0, 42),
    ]
    messages = []
    for reason, detail, topic, partition, offset in letters:
        value = dead_letter(
            codec, Stage.MATCHER, reason, detail, topic, partition, offset, b"acct-1", f"payload {SECRET}".encode()
        )
        messages.append((names.dead_letters.name, b"acct-1", value, None))
    asyncio.run(send_once(settings, messages))

    out = ok(cashback(env, "dead-letters"))
    assert SECRET not in out
    for reason, detail, topic, partition, offset in letters:
        line = next((line for line in out.splitlines() if reason in line), None)
        assert line is not None, out
        assert f"{topic}[{partition}]@{offset}" in line and detail in line
    assert "3 dead letters shown" in out

    newest = ok(cashback(env, "dead-letters", "--limit", "1"))
    assert "negative_amount" in newest and "unknown_currency" not in newest
    assert "1 dead letters shown" in newest


def test_dead_letters_show_card_numbers_masked_only(env: dict[str, str]) -> None:
    """A card number in a dead letter is listed masked: in the original (masked when written; its
    keyed hash shown), and in the detail of a dead letter written before masking existed (version 1)."""
    from schemas.codec import load_shipped_schemas
    from stream.core.card_numbers import luhn_valid
    from tests.factories import card_record

    ok(cashback(env, "topics"))
    names, codec, settings = topic_names(env), Codec(), Settings.from_env(env)
    number = next(n for n in (f"4{uuid.uuid4().int % 10**15:015d}" for _ in range(100)) if luhn_valid(n))
    older = Codec({i: s for i, s in load_shipped_schemas().items() if i != codec.schema_id("dead_letter")})
    old = older.encode(
        "dead_letter",
        {
            "source_topic": names.settlements.name,
            "source_partition": 1,
            "source_offset": 771,
            "key": b"acct-1",
            "value": None,
            "reason": "processing_error",
            "detail": f"written before masking: {number}",
            "failed_at": 0,
            "stage": "matcher",
        },
    )
    original = codec.encode("authorization_event", card_record(merchant_name=f"SHOP {number}"))
    new = dead_letter(
        codec, Stage.MATCHER, "card_number_detected", "field merchant_name: card_number_detected",
        names.authorizations.name, 2, 772, b"acct-1", original,
    )  # fmt: skip
    asyncio.run(send_once(settings, [(names.dead_letters.name, b"x", old, None), (names.dead_letters.name, b"x", new, None)]))

    out = ok(cashback(env, "dead-letters"))
    assert number not in out and number[6:-4] not in out
    old_line = next(line for line in out.splitlines() if "@771 " in line)
    assert f"written before masking: {number[:6]}******{number[-4:]}" in old_line
    new_line = next(line for line in out.splitlines() if "@772 " in line)
    assert f"({len(original)} bytes)" in new_line and "[card numbers masked: " in new_line


def test_dead_letters_without_the_topic_says_so(env: dict[str, str]) -> None:
    prefix = f"nothing-here-{uuid.uuid4().hex[:6]}."
    refused(cashback({**env, "TOPIC_PREFIX": prefix}, "dead-letters"), f"{prefix}dead-letters", "TOPIC_PREFIX")


# --- bad arguments, configuration and servers -----------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["dead-letters", "--limit", "0"],
        ["dead-letters", "--limit", "many"],
        ["simulate", "--bad-ratio", "2"],
        ["simulate", "--rate", "-1"],
        ["backtest", "--purchases", "0"],
        ["accounts", "activate", "", "grocery-5"],
        ["offers", "remove", " "],
        ["gdpr", "erase", "acct-1"],
        ["gdpr", "erase", "acct-1", "--reason", " "],
        ["local", "--duration", "0"],
        ["payouts"],
        ["payouts", "run", "--run-id", "a:b"],
        ["payouts", "open-wallets", "--opening-id", " "],
        ["offers"],
        ["no-such-command"],
    ],
)
def test_bad_arguments_exit_2_with_usage(env: dict[str, str], args: list[str]) -> None:
    result = cashback(env, *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "error:" in result.stderr


def test_bad_configuration_exits_2_naming_the_variable(env: dict[str, str]) -> None:
    refused(cashback({**env, "TOPIC_PARTITIONS": "many"}, "dead-letters"), "TOPIC_PARTITIONS")


@pytest.mark.parametrize(
    "args",
    [
        ["topics"],
        ["dead-letters"],
        ["offers", "load", str(TEST_OFFERS)],
        ["offers", "remove", "grocery-5"],
        ["accounts", "segments", "acct-1", "vip"],
        ["accounts", "activate", "acct-1", "grocery-5"],
        ["simulate", "--purchases", "1", "--quiet"],
        ["sink"],
        ["worker"],
    ],
)
def test_an_unreachable_broker_is_one_line_and_exit_2(env: dict[str, str], args: list[str]) -> None:
    closed = f"127.0.0.1:{free_port()}"
    # The long-running processes log each failed connection too; their last line is the message.
    one_line = args[0] not in ("simulate", "sink", "worker")
    refused(cashback({**env, "KAFKA_BOOTSTRAP_SERVERS": closed}, *args), closed, "cannot reach Kafka", one_line=one_line)


@pytest.mark.parametrize("command", ["migrate", "api"])
def test_an_unreachable_postgres_is_one_line_without_the_password(env: dict[str, str], command: str) -> None:
    dsn = f"postgresql://cashback:hunter2@127.0.0.1:{free_port()}/cashback"
    message = refused(cashback({**env, "DATABASE_URL": dsn}, command), "cannot connect to Postgres", "cashback:***@")
    assert "hunter2" not in message


def test_the_gdpr_commands_never_migrate_and_say_so_in_one_line(env: dict[str, str]) -> None:
    for args in (["gdpr", "export", "acct-1"], ["gdpr", "erase", "acct-1", "--reason", "DSR-1"]):
        refused(cashback({**env, "DATABASE_URL": fresh_database(env["DATABASE_URL"])}, *args), "run `cashback migrate` first")
    dsn = f"postgresql://cashback:hunter2@127.0.0.1:{free_port()}/cashback"
    message = refused(cashback({**env, "DATABASE_URL": dsn}, "gdpr", "export", "acct-1"), "cannot connect to Postgres", "***@")
    assert "hunter2" not in message


def test_the_payout_commands_say_an_unreachable_or_unmigrated_ledger_in_one_line(env: dict[str, str]) -> None:
    for args in (["payouts", "run"], ["payouts", "open-wallets"]):
        refused(cashback({**env, "DATABASE_URL": fresh_database(env["DATABASE_URL"])}, *args), "run `cashback migrate` first")
    dsn = f"postgresql://cashback:hunter2@127.0.0.1:{free_port()}/cashback"
    message = refused(cashback({**env, "DATABASE_URL": dsn}, "payouts", "run"), "cannot connect to Postgres", "***@")
    assert "hunter2" not in message


def test_masked_dsn_hides_passwords() -> None:
    assert masked_dsn("postgresql://u:pw@h:5432/db?sslmode=require") == "postgresql://u:***@h:5432/db?sslmode=require"
    assert masked_dsn("postgresql://u@h/db?password=pw") == "postgresql://u@h/db?password=***"
    assert masked_dsn("postgresql://u@h/db") == "postgresql://u@h/db"


# --- the local stack on servers it did not start ---------------------------------------------------


class Stack:
    """``stream local`` as a subprocess, its output collected line by line."""

    def __init__(self, environ: dict[str, str], *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "stream", "local", *args],
            cwd=REPO_ROOT,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(iter(self.process.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
        self.reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, timeout_s: float = 90) -> str:
        wait_until(
            lambda: "local stack is up" in self.output or self.process.poll() is not None,
            timeout_s,
            "the stack to start",
            observe=lambda: self.output[-3000:],
        )
        assert "local stack is up" in self.output, self.output
        return self.output

    def wait(self, timeout_s: float = 60) -> int:
        try:
            return self.process.wait(timeout=timeout_s)
        finally:
            self.reader.join(timeout=10)
            self.process.stdout.close()  # type: ignore[union-attr]

    def kill(self) -> None:
        if self.process.poll() is None:
            terminate(self.process, grace_s=5)


@pytest.fixture
def stack_env(kafka_bootstrap: str, postgres_url: str, work_dir: Path) -> Iterator[dict[str, str]]:
    """Existing servers (the session's), with their own topics and a database whose DSN carries a
    password (the embedded Postgres's own; one is added for a server given by DATABASE_URL that
    trusts its clients), so the banner's masking shows."""
    log_dir = work_dir / f"cli-local-{uuid.uuid4().hex[:8]}"
    log_dir.mkdir()
    environ = isolated_env(kafka_bootstrap, postgres_url, log_dir, "clilocal")
    environ["DATABASE_URL"] = re.sub(r"^(postgresql://[^:@/]+)@", r"\1:hunter2@", environ["DATABASE_URL"])
    yield environ


def test_local_stack_on_existing_servers_publishes_no_demo_and_stops_on_ctrl_c(stack_env: dict[str, str]) -> None:
    stack = Stack(stack_env)
    try:
        banner = stack.wait_ready()
        password = urlsplit(stack_env["DATABASE_URL"]).password
        assert password and password not in banner
        assert f"postgres      {masked_dsn(stack_env['DATABASE_URL'])}" in banner
        assert ":***@" in banner
        assert "offers        none loaded" in banner and "simulator     off" in banner

        # The banner's dead-letters command works as printed.
        command = re.search(r"dead letters  (.+)", banner).group(1)  # type: ignore[union-attr]
        listed = subprocess.run(["bash", "-c", command], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0 and "0 dead letters shown" in listed.stdout, listed.stdout + listed.stderr

        # The banner's token command mints a token its API accepts (no cashback for the demo account here: 404, not 401).
        command = re.search(r"\(more tokens: (.+)\)\n", banner).group(1)  # type: ignore[union-attr]
        minted = subprocess.run(["bash", "-c", command], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert minted.returncode == 0, minted.stderr
        api = re.search(r"balance API\s+(http://127\.0\.0\.1:\d+)", banner).group(1)  # type: ignore[union-attr]
        bearer = {"Authorization": f"Bearer {minted.stdout.strip()}"}
        assert httpx.get(f"{api}/v1/accounts/acct-000001/balances", headers=bearer, timeout=5).status_code == 404
        assert httpx.get(f"{api}/v1/accounts/acct-000001/balances", timeout=5).status_code == 401

        descendants = psutil.Process(stack.process.pid).children(recursive=True)
        running = " ".join(" ".join(p.cmdline()) for p in descendants)
        assert "stream worker" in running and "stream api" in running
        assert "stream simulate" not in running and "kafka.Kafka" not in running

        names = topic_names(stack_env)
        for topic in (names.offers, names.authorizations, names.settlements, names.profiles, names.activations):
            assert records(stack_env, topic) == [], f"{topic.name} is not empty"
    finally:
        if stack.process.poll() is None:
            stack.process.send_signal(signal.SIGINT)
        try:
            code = stack.wait(60)
        finally:
            stack.kill()
    assert code == 0, stack.output[-3000:]
    assert "stopped" in stack.output
    wait_until(
        lambda: not [p for p in descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE],
        10,
        "the stack's children to stop",
    )


def test_local_stack_loads_the_offers_file_it_is_given(stack_env: dict[str, str]) -> None:
    stack = Stack(stack_env, "--offers", str(TEST_OFFERS), "--duration", "1")
    try:
        code = stack.wait(120)
    finally:
        stack.kill()
    assert code == 0, stack.output[-3000:]
    assert "loaded 2 offers from tests/integration/offers.yaml" in stack.output
    assert "simulator     off" in stack.output
    names = topic_names(stack_env)
    published = records(stack_env, names.offers)
    assert sorted(k.decode() for k, _ in published) == sorted(o.offer_id for o in load_offers_file(TEST_OFFERS))
    assert records(stack_env, names.authorizations) == []


def test_local_stack_refuses_a_bad_offers_file_before_starting(
    stack_env: dict[str, str], bad_files: dict[str, tuple[Path, str]]
) -> None:
    path, says = bad_files["invalid_field"]
    result = subprocess.run(
        [sys.executable, "-m", "stream", "local", "--offers", str(path)],
        cwd=REPO_ROOT,
        env=stack_env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    refused(result, says)
    assert "starting" not in result.stdout
