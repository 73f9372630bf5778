"""No card number is kept anywhere, end to end on the real broker and Postgres.

A card processor publishes card events carrying a card number (made here from random digits: a
16-digit number in Visa's range with a valid Luhn digit, so it is one in every field, ids included)
in every text field of the authorisation and the settlement schemas, together, in groups of four
spaced and dashed; in the key; in bytes that do not decode; and good events beside them. The
worker and the sink process them all: every bad one is dead-lettered, the good ones are balances.
Then the number is searched for, in each of its three forms: in every process's log, in every topic
of the run read from its start (keys, values and headers; the catalogue's topics, the tables'
changelogs and any other topic the run made, the dead letters included) but the two card-event
topics the card processor wrote it to (where it must be found: the search works), in every row of
every table of the database, in each process's /metrics and in the worker's local table store.
Zero hits. The dead letters hold the masked form and the keyed hash of the number.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from schemas.codec import Codec
from stream.auth import ACCOUNTS_READ
from stream.core.card_numbers import luhn_valid
from tests.factories import card_record, card_text_fields, generated_card_number
from tests.integration.conftest import REPO_ROOT, Processes, api_headers, running_pipeline, wait_until
from tests.integration.test_end_to_end import IDS, publish, wire
from topics.catalogue import catalogue, table_changelogs

pytestmark = pytest.mark.integration

HASH_KEY = f"pan-test-{uuid.uuid4().hex}{uuid.uuid4().hex}"
TEXT_FIELDS = card_text_fields()  # every text field of both card schemas
GOOD_BALANCE = {
    "pending_minor": 0,
    "confirmed_minor": 400,
    "available_minor": 0,
    "lifetime_earned_minor": 400,
    "clawed_back_minor": 0,
    "donated_minor": 0,
    "held_minor": 0,
    "paid_out_minor": 0,
    "redeemed_minor": 0,
}


def card_number() -> str:
    return generated_card_number()


def forms(number: str) -> list[str]:
    groups = [number[i : i + 4] for i in range(0, 16, 4)]
    return [number, " ".join(groups), "-".join(groups)]


def masked(number: str) -> str:
    return number[:6] + "******" + number[-4:]


@pytest.fixture(scope="module")
def run(request: pytest.FixtureRequest, kafka_bootstrap: str, postgres_url: str, work_dir: Path) -> Iterator[Any]:
    with running_pipeline(
        request,
        kafka_bootstrap,
        postgres_url,
        work_dir,
        "pan",
        REPO_ROOT / "tests" / "integration" / "offers.yaml",
        DEAD_LETTER_HASH_KEY=HASH_KEY,
    ) as (processes, base_url):
        processes.metrics_ports["api"] = int(processes.env["API_PORT"])
        yield processes, base_url


def bad_messages(env: dict[str, str], number: str) -> list[tuple[str, bytes, bytes]]:
    """(topic, key, value): the number in every text field of both schemas, in each form; in bytes
    that do not decode (a bad magic byte, an unknown schema id, glued to digit bytes behind a valid
    header); in the key of a message whose key is not its account."""
    messages = []
    for kind in ("AUTHORIZATION", "CLEARING"):
        for field in TEXT_FIELDS:
            for n, written in enumerate(forms(number)):
                record = card_record(kind, 1_000, account_id="pan-bad", event_id=f"pan-{uuid.uuid4().hex[:8]}")
                record[field] = written if field in ("currency", "billing_currency", "mcc") else f"ref {written} {n}"
                key = record["account_id"].encode()
                topic = env["TOPIC_PREFIX"] + ("card.authorizations" if kind == "AUTHORIZATION" else "card.settlements")
                messages.append((topic, key, wire(record)))
    authorizations = env["TOPIC_PREFIX"] + "card.authorizations"
    header = struct.pack(">bI", 0, IDS["authorization_event.avsc"])
    messages += [
        (authorizations, b"pan-bad", b"\x07 card " + number.encode()),
        (authorizations, b"pan-bad", struct.pack(">bI", 0, 424_242) + forms(number)[1].encode()),
        (authorizations, b"pan-bad", header + b"\x02" + number.encode() + b"\x36\xff"),
        (authorizations, forms(number)[2].encode(), wire(card_record("AUTHORIZATION", 1_000, account_id="pan-key"))),
    ]
    return messages


async def read_topic(bootstrap: str, topic: str) -> list[Any]:
    """Every record of ``topic`` from its start to its end now."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (description,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = [TopicPartition(topic, p["partition"]) for p in description["partitions"]]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        found: list[Any] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:  # a list: ``any`` takes no async generator
            assert loop.time() < deadline, f"reading {topic} stalled"
            for records in (await consumer.getmany(timeout_ms=500)).values():
                found += [record for record in records if record.offset < end[TopicPartition(record.topic, record.partition)]]
        return found
    finally:
        await consumer.stop()


async def run_topics(bootstrap: str, env: dict[str, str]) -> list[str]:
    """The catalogue's topics, the tables' changelogs, and every other topic named after this run."""
    names = catalogue(env["TOPIC_PREFIX"]).all()
    expected = {topic.name for topic in (*names, *table_changelogs(env["APP_ID"], names[0].partitions))}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
    finally:
        await admin.close()
    assert expected <= existing, expected - existing
    return sorted(expected | {t for t in existing if t.startswith(env["TOPIC_PREFIX"]) or t.startswith(env["APP_ID"])})


async def database_dump(database_url: str) -> dict[str, bytes]:
    """Every row of every table of the database, as COPY writes them, per table."""
    connection = await asyncpg.connect(database_url)
    try:
        tables = await connection.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')"
        )
        dump = {}
        for table in tables:
            buffer = io.BytesIO()
            await connection.copy_from_table(table["table_name"], schema_name=table["table_schema"], output=buffer)
            dump[f"{table['table_schema']}.{table['table_name']}"] = buffer.getvalue()
        return dump
    finally:
        await connection.close()


def dead_letters(processes: Processes, want: int) -> list[dict[str, Any]]:
    codec = Codec()
    topic = processes.env["TOPIC_PREFIX"] + "dead-letters"
    bootstrap = processes.env["KAFKA_BOOTSTRAP_SERVERS"]
    letters: list[dict[str, Any]] = []

    def enough() -> bool:
        records = asyncio.run(read_topic(bootstrap, topic))
        letters[:] = [codec.decode(record.value, expected_subject="dead_letter")[1] for record in records]
        return len(letters) >= want

    wait_until(enough, 120, f"{want} dead letters", interval_s=1.0, observe=lambda: len(letters))
    return letters


def test_no_card_number_is_kept_anywhere(run: Any) -> None:
    processes, base_url = run
    env = processes.env
    number = card_number()
    bad = bad_messages(env, number)
    good = [
        card_record("AUTHORIZATION", 8_000, account_id="pan-good", transaction_ref="pan-good-1", event_id="pan-good-1"),
        card_record("CLEARING", 8_000, account_id="pan-good", transaction_ref="pan-good-1", event_id="pan-good-2"),
    ]
    good_messages = [
        (env["TOPIC_PREFIX"] + ("card.authorizations" if "AUTH" in r["event_type"] else "card.settlements"), b"pan-good", wire(r))
        for r in good
    ]
    asyncio.run(publish(env["KAFKA_BOOTSTRAP_SERVERS"], good_messages[:1] + bad + good_messages[1:]))

    def good_balance() -> Any:
        headers = api_headers([ACCOUNTS_READ], ["pan-good"])
        response = httpx.get(f"{base_url}/v1/accounts/pan-good/balances", headers=headers, timeout=5)
        lines = response.json().get("balances") if response.status_code == 200 else None
        return lines and {k: v for k, v in lines[0].items() if k.endswith("_minor")}

    wait_until(lambda: good_balance() == GOOD_BALANCE, 90, "the good purchase's balance", observe=good_balance)
    letters = dead_letters(processes, len(bad))

    # Where to look: everything the run wrote.
    bootstrap = env["KAFKA_BOOTSTRAP_SERVERS"]
    places: dict[str, bytes] = {}
    for name in ("worker", "sink", "api"):
        places[f"log of {name}"] = (processes.log_dir / f"{name}.log").read_bytes()
        places[f"/metrics of {name}"] = httpx.get(f"http://127.0.0.1:{processes.metrics_ports[name]}/metrics", timeout=5).content
    topics = asyncio.run(run_topics(bootstrap, env))
    sources = {env["TOPIC_PREFIX"] + "card.authorizations", env["TOPIC_PREFIX"] + "card.settlements"}
    for topic in topics:
        records = asyncio.run(read_topic(bootstrap, topic))
        places[f"topic {topic}"] = b"\n".join(
            b"\n".join(
                [record.key or b"", record.value or b"", *(name.encode() + b"=" + value for name, value in record.headers)]
            )
            for record in records
        )
    for table, rows in asyncio.run(database_dump(env["DATABASE_URL"])).items():
        places[f"table {table}"] = rows
    store = Path(env["WORKER_DATA_DIR"])
    for path in sorted(store.rglob("*")):
        if path.is_file():
            places[f"worker store {path.relative_to(store)}"] = path.read_bytes()

    patterns = [written.encode() for written in forms(number)]
    hits = sorted(
        {place for place, data in places.items() if place.removeprefix("topic ") not in sources for p in patterns if p in data}
    )
    assert hits == [], f"the card number was found in: {hits}"
    # The search does find it where the card processor put it, and it did look everywhere.
    assert all(any(p in places[f"topic {topic}"] for p in patterns) for topic in sources)
    assert {"table public.ledger_entries", "table public.balances", f"topic {env['TOPIC_PREFIX']}dead-letters"} <= set(places)
    assert sum(place.endswith("-changelog") for place in places) == 2
    assert places[f"topic {env['TOPIC_PREFIX']}notifications"]  # the good purchase's notifications were searched too
    assert HASH_KEY.encode() not in b"".join(places.values())

    # Every bad message was dead-lettered, the number masked in it, and hashed with the key.
    assert len(letters) == len(bad)
    assert sum(letter["reason"] == "card_number_detected" for letter in letters) == 2 * len(TEXT_FIELDS) * 3

    def hashed(digits: str) -> str:
        return hmac.new(HASH_KEY.encode(), digits.encode(), hashlib.sha256).hexdigest()

    # In bytes glued to a digit ("6" after the number, bad_messages), the 17 digits are one Luhn-valid
    # number one time in ten: undecodable bytes cannot say where a number ends, so that run is what is
    # masked and hashed.
    glued = number + "6"
    for letter in letters:
        accepted = {hashed(number)} | (
            {hashed(glued)} if (letter["value"] or b"").endswith(b"\x36\xff") and luhn_valid(glued) else set()
        )
        assert accepted & set(letter["card_number_hashes"]), (letter["reason"], letter["card_number_hashes"])
    assert any(masked(number).encode() in (letter["value"] or b"") for letter in letters)
    assert any(masked(number).encode() in (letter["key"] or b"") for letter in letters)


def test_metrics_listen_on_loopback_only(run: Any) -> None:
    processes, _ = run
    for name in ("worker", "sink"):
        pid = processes.children[name].pid  # type: ignore[attr-defined]
        listening = {
            c.laddr.ip
            for c in psutil.Process(pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == processes.metrics_ports[name]
        }
        assert listening == {"127.0.0.1"}, (name, listening)
