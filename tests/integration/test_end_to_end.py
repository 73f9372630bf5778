"""End to end on the real broker and Postgres: card events written by a plain Kafka client in the
documented wire format (fastavro + the 5-byte header, not the project's codec) come out as
balances in the API; a replay changes nothing; bad messages land in the dead-letter topic with
their reason while the good ones around them are processed."""

from __future__ import annotations

import asyncio
import io
import json
import random
import struct
import uuid
from datetime import UTC
from pathlib import Path
from typing import Any

import asyncpg
import fastavro
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream.auth import ACCOUNTS_READ, OPERATIONS
from stream.core.balances import BALANCE_FIELDS
from stream.settings import Settings
from tests.factories import card_record
from tests.integration.conftest import api_headers, wait_until
from topics.catalogue import account_partition

pytestmark = pytest.mark.integration

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
IDS = json.loads((SCHEMAS / "ids.json").read_text())


def _schema(file_name: str) -> Any:
    return fastavro.parse_schema(json.loads((SCHEMAS / file_name).read_text()))


AUTH_SCHEMA, SETTLEMENT_SCHEMA = _schema("authorization_event.avsc"), _schema("settlement_event.avsc")
# Dead letters are read with the schema their header names (version 2 masks card numbers).
DEAD_LETTER_SCHEMAS = {IDS[name]: _schema(name) for name in IDS if name.startswith("dead_letter")}


def wire(record: dict[str, Any]) -> bytes:
    """Confluent wire format by hand: magic 0, big-endian schema id, Avro binary."""
    is_auth = record["event_type"].startswith("AUTHORIZATION") or record["event_type"] == "INCREMENTAL_AUTHORIZATION"
    file_name = "authorization_event.avsc" if is_auth else "settlement_event.avsc"
    buffer = io.BytesIO()
    buffer.write(struct.pack(">bI", 0, IDS[file_name]))
    fastavro.schemaless_writer(buffer, AUTH_SCHEMA if is_auth else SETTLEMENT_SCHEMA, record)
    return buffer.getvalue()


def topic_for(env: dict[str, str], record: dict[str, Any]) -> str:
    is_auth = "AUTHORIZATION" in record["event_type"]
    return env["TOPIC_PREFIX"] + ("card.authorizations" if is_auth else "card.settlements")


async def publish(bootstrap: str, messages: list[tuple[Any, ...]]) -> None:
    """(topic, key, value) or (topic, key, value, partition), sent in order by a plain client."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for topic, key, value, *partition in messages:
            await producer.send_and_wait(topic, value, key=key, partition=partition[0] if partition else None)
    finally:
        await producer.stop()


async def publish_at(bootstrap: str, topic: str, key: bytes, value: bytes, timestamp_ms: int) -> None:
    """One message with the broker timestamp ``timestamp_ms`` (CreateTime, as a card processor's client sets it)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key, timestamp_ms=timestamp_ms)
    finally:
        await producer.stop()


def publish_records(env: dict[str, str], records: list[dict[str, Any]]) -> None:
    asyncio.run(
        publish(env["KAFKA_BOOTSTRAP_SERVERS"], [(topic_for(env, r), r["account_id"].encode(), wire(r)) for r in records])
    )


def purchase_stories(tag: str) -> tuple[list[dict[str, Any]], dict[str, dict[str, int] | None]]:
    """DOMAIN.md lifecycle cases with the 5% grocery offer, one account each; expected balances."""
    a, b, c, d, e, f = (f"{tag}-{letter}" for letter in "abcdef")

    def story(account: str, *steps: tuple[str, int, dict[str, Any]]) -> list[dict[str, Any]]:
        ref = f"{account}-ref"
        return [
            card_record(kind, amount, account_id=account, transaction_ref=ref, event_id=f"{account}-{n}", **extra)
            for n, (kind, amount, extra) in enumerate(steps)
        ]

    records = (
        story(a, ("AUTHORIZATION", 10_000, {}), ("CLEARING", 8_000, {}))  # case 2
        + story(b, ("AUTHORIZATION", 3_000, {}), ("AUTHORIZATION_REVERSAL", 2_000, {}), ("CLEARING", 1_000, {}))  # case 3
        + story(
            c,
            ("AUTHORIZATION", 10_000, {}),
            ("CLEARING", 10_000, {}),
            ("REFUND", 4_000, {"processing_code": "REFUND", "original_transaction_ref": f"{c}-ref"}),
        )  # case 10
        + story(d, ("AUTHORIZATION", 10_000, {"response_code": "51"}))  # case 12: declined
        + story(e, ("AUTHORIZATION", 5_000, {"mcc": "5812"}), ("CLEARING", 5_000, {"mcc": "5812"}))  # no return window
        + story(f, ("AUTHORIZATION", 5_000, {}), ("INCREMENTAL_AUTHORIZATION", 3_000, {}))  # case 4
    )
    expected = {
        a: balance_line(confirmed_minor=400, lifetime_earned_minor=400),
        b: balance_line(confirmed_minor=50, lifetime_earned_minor=50),
        c: balance_line(confirmed_minor=300, lifetime_earned_minor=500, clawed_back_minor=200),
        d: None,
        e: balance_line(available_minor=150, lifetime_earned_minor=150),
        f: balance_line(pending_minor=400),
    }
    return records, expected


def balance_line(**minor: int) -> dict[str, int]:
    """An account's balance line as the API gives it: the figures named, every other one 0."""
    assert set(minor) <= set(BALANCE_FIELDS), set(minor) - set(BALANCE_FIELDS)
    return {**dict.fromkeys(BALANCE_FIELDS, 0), **minor}


PENDING_500 = balance_line(pending_minor=500)  # one purchase of 100.00 at the 5% grocery offer, authorised


def balance(base_url: str, account: str) -> dict[str, int] | None:
    """The account's one balance line, as the bank app acting for its customer reads it."""
    response = httpx.get(f"{base_url}/v1/accounts/{account}/balances", headers=api_headers([ACCOUNTS_READ], [account]), timeout=5)
    if response.status_code == 404:
        return None
    response.raise_for_status()
    lines = response.json()["balances"]
    if not lines:  # seen, nothing earned yet
        return None
    (line,) = lines
    return {k: v for k, v in line.items() if k.endswith("_minor")}


def wait_for_balance(base_url: str, account: str, expected: dict[str, int], timeout_s: float = 60) -> None:
    wait_until(
        lambda: balance(base_url, account) == expected,
        timeout_s,
        f"balance of {account} to be {expected}",
        observe=lambda: balance(base_url, account),
    )


def publish_stories_and_wait(env: dict[str, str], base_url: str, tag: str):  # type: ignore[no-untyped-def]
    """Publish purchase_stories(tag) and wait until every expected balance shows in the API."""
    records, expected = purchase_stories(tag)
    publish_records(env, records)
    for account, want in expected.items():
        if want is not None:
            wait_for_balance(base_url, account, want)
    return records, expected


def sentinel(env: dict[str, str], base_url: str) -> None:
    """Publish one more purchase and wait for it: everything published before it on its partition
    has been processed by then."""
    account = f"sentinel-{uuid.uuid4().hex[:6]}"
    records = [card_record("AUTHORIZATION", 2_000, account_id=account, transaction_ref=f"{account}-ref")]
    publish_records(env, records)
    wait_for_balance(
        base_url,
        account,
        balance_line(pending_minor=100),
    )


async def _ledger_count(database_url: str, accounts: list[str]) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetchval("SELECT count(*) FROM ledger_entries WHERE account_id = ANY($1)", accounts)
    finally:
        await connection.close()


def test_card_events_become_balances_in_the_api(pipeline) -> None:  # type: ignore[no-untyped-def]
    processes, base_url = pipeline
    publish_stories_and_wait(processes.env, base_url, "e2e")
    declined = httpx.get(f"{base_url}/v1/accounts/e2e-d/balances", headers=api_headers([ACCOUNTS_READ], ["e2e-d"]), timeout=5)
    assert declined.status_code == 200 and declined.json()["balances"] == []  # seen: zero balances
    # The API process serves no one without a token, nor another customer's account.
    assert httpx.get(f"{base_url}/v1/accounts/e2e-d/balances", timeout=5).status_code == 401
    assert (
        httpx.get(
            f"{base_url}/v1/accounts/e2e-d/balances", headers=api_headers([ACCOUNTS_READ], ["e2e-c"]), timeout=5
        ).status_code
        == 404
    )

    # History, newest first, one line a page. The authorisation and its clearing travel on two
    # topics, so the clearing may be processed first (DOMAIN case 8: confirmed from EXPENSE, the
    # late authorisation changes nothing): 2 or 3 lines, the same balances.
    kinds, cursor = [], None
    while True:
        page = httpx.get(
            f"{base_url}/v1/accounts/e2e-c/history",
            params={"limit": 1, **({"cursor": cursor} if cursor else {})},
            headers=api_headers([ACCOUNTS_READ], ["e2e-c"]),
            timeout=5,
        ).json()
        assert len(page["entries"]) == 1
        kinds.append(
            (page["entries"][0]["entry_kind"], page["entries"][0]["amount_minor"], page["entries"][0]["explanation"]["reason"])
        )
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert kinds in (
        [("CLAWED_BACK", 200, "refund"), ("CONFIRMED", 500, "confirmed"), ("PENDING_CREATED", 500, "earned")],
        [("CLAWED_BACK", 200, "refund"), ("CONFIRMED", 500, "confirmed")],
    )
    assert httpx.get(f"{base_url}/openapi.json", timeout=5).json()["paths"]["/v1/accounts/{account_id}/balances"]

    # Metrics: what the worker and the sink did, without any account id in a label.
    assert processes.metric("worker", "cashback_events_consumed_total", {"event_type": "AUTHORIZATION"}) >= 6
    assert processes.metric("worker", "cashback_events_consumed_total", {"event_type": "CLEARING", "outcome": "confirmed"}) >= 4
    assert (
        processes.metric("worker", "cashback_events_consumed_total", {"event_type": "AUTHORIZATION", "outcome": "declined"}) >= 1
    )
    assert processes.metric("worker", "cashback_amount_minor_total", {"entry_kind": "CLAWED_BACK", "currency": "EUR"}) >= 200
    assert (
        processes.metric("sink", "cashback_sink_entries_total", {"result": "written"}) >= 8
    )  # fewest: every clearing before its auth
    assert processes.metric("sink", "cashback_sink_batch_seconds_count") >= 1
    wait_until(lambda: processes.metric("worker", "cashback_consumer_lag_messages") is not None, 30, "the worker's lag gauge")
    assert processes.metric("sink", "cashback_consumer_lag_messages") is not None
    for name in ("worker", "sink"):
        exposition = httpx.get(f"http://127.0.0.1:{processes.metrics_ports[name]}/metrics", timeout=5).text
        assert "e2e-" not in exposition


def test_publishing_the_same_events_twice_changes_nothing(pipeline) -> None:  # type: ignore[no-untyped-def]
    processes, base_url = pipeline
    records, expected = publish_stories_and_wait(processes.env, base_url, "replay")
    accounts = list(expected)
    entries_before = asyncio.run(_ledger_count(processes.env["DATABASE_URL"], accounts))

    publish_records(processes.env, records)  # the whole stream again, same event ids
    sentinel(processes.env, base_url)

    for account, want in expected.items():
        assert balance(base_url, account) == want
    assert asyncio.run(_ledger_count(processes.env["DATABASE_URL"], accounts)) == entries_before


def _luhn_number(rng: random.Random) -> str:
    from stream.core.card_numbers import luhn_valid

    while True:
        digits = "".join(rng.choice("0123456789") for _ in range(16))
        if luhn_valid(digits):
            return digits


async def _read_dead_letters(bootstrap: str, topic: str, want: int, timeout_s: float = 60) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    letters: list[dict[str, Any]] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(letters) < want and loop.time() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    assert record.value[:1] == b"\x00"
                    schema = DEAD_LETTER_SCHEMAS[struct.unpack(">I", record.value[1:5])[0]]
                    letters.append(fastavro.schemaless_reader(io.BytesIO(record.value[5:]), schema))
    finally:
        await consumer.stop()
    return letters


NOTIFICATION_SCHEMA = _schema("notification.avsc")


async def _read_partition(bootstrap: str, topic: str, partition: int) -> list[Any]:
    """Every record of one partition up to its end offset now, in order, by a plain client."""
    from aiokafka import TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        records: list[Any] = []
        while await consumer.position(tp) < end:
            for batch in (await consumer.getmany(tp, timeout_ms=500)).values():
                records += [record for record in batch if record.offset < end]
        return records
    finally:
        await consumer.stop()


def notifications_of(env: dict[str, str], account: str) -> list[dict[str, Any]]:
    """What a bank app reads for ``account`` on the notifications topic: its partition (the card
    events' own, murmur2 of the account id), in order, decoded with the shipped schema by hand,
    each notification id once (a consumer dedupes by id: a repeat carries the same id)."""
    from stream.settings import Settings
    from topics.catalogue import account_partition

    partitions = Settings.from_env(env).topic_partitions
    topic = env["TOPIC_PREFIX"] + "notifications"
    records = asyncio.run(_read_partition(env["KAFKA_BOOTSTRAP_SERVERS"], topic, account_partition(account, partitions)))
    seen: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.key != account.encode():
            continue
        assert record.value[:5] == struct.pack(">bI", 0, IDS["notification.avsc"])
        notification = fastavro.schemaless_reader(io.BytesIO(record.value[5:]), NOTIFICATION_SCHEMA)
        assert notification["account_id"] == account
        seen.setdefault(notification["notification_id"], notification)
    return list(seen.values())


def test_bank_apps_read_each_accounts_notifications_in_its_language(pipeline) -> None:  # type: ignore[no-untyped-def]
    """Issue 12 part 3 on the real stack: a French and an English account earn, confirm and get
    their cashback; a points offer's lot is announced before it expires (the worker's own clock).
    Read with an independent client: keyed and partitioned by account, in order, ids the ledger's."""
    from datetime import datetime, timedelta

    from schemas.codec import Codec
    from stream.account_messages import publish_segments
    from stream.core.offer_parsing import parse_offer
    from stream.offer_admin import publish_offers, remove_offers
    from stream.settings import Settings
    from topics.catalogue import catalogue

    processes, base_url = pipeline
    env = processes.env
    settings = Settings.from_env(env)
    topics = catalogue(settings.topic_prefix, settings.topic_partitions)
    tag = uuid.uuid4().hex[:6]
    french, english, points = f"fr-{tag}", f"en-{tag}", f"pts-{tag}"
    asyncio.run(publish_segments(settings, Codec(), topics.profiles, french, [], "fr"))
    expiring = parse_offer(
        {
            "offer_id": f"books-points-{tag}",
            "name": "2 points per euro at book shops",
            "reward_kind": "POINTS",
            "points_per_unit": 2,
            "currency": "EUR",
            "mccs": ["5942"],
            "pending_days": 0,
            "available_expiry_days": 30,
            "expiry_notice_days": 7,
        }
    )
    asyncio.run(publish_offers(settings, Codec(), topics.offers.name, [expiring]))
    loaded = lambda: processes.metric("worker", "cashback_offers_loaded")  # noqa: E731
    wait_until(lambda: loaded() == 3, 30, "the points offer", observe=loaded)
    try:
        records = [
            card_record("CLEARING", 10_000, account_id=account, transaction_ref=f"{account}-1", mcc="5812")
            for account in (french, english)  # dining-3-now: confirmed and available at once
        ]
        # Points made available 25 days ago: expire in 5 or 6 days, announced a day or two ago.
        long_ago = datetime.now(UTC) - timedelta(days=25)
        records.append(
            card_record("CLEARING", 10_000, account_id=points, transaction_ref=f"{points}-1", mcc="5942", occurred_at=long_ago)
        )
        publish_records(env, records)

        def told(account: str, count: int) -> list[dict[str, Any]] | None:
            read = notifications_of(env, account)
            return read if len(read) >= count else None

        fr_read = wait_until(lambda: told(french, 2), 60, "the French account's notifications")
        en_read = wait_until(lambda: told(english, 2), 60, "the English account's notifications")
        pts_read = wait_until(lambda: told(points, 3), 60, "the expiry notice", observe=lambda: notifications_of(env, points))
    finally:
        asyncio.run(remove_offers(settings, topics.offers.name, [expiring.offer_id]))

    assert [(n["kind"], n["language"]) for n in fr_read] == [("CONFIRMED", "fr"), ("AVAILABLE", "fr")]
    assert fr_read[1]["line"] == "Désormais à votre disposition\u202f: 3,00\u00a0€ de cashback."
    assert [(n["kind"], n["language"]) for n in en_read] == [("CONFIRMED", "en"), ("AVAILABLE", "en")]
    assert en_read[0]["line"] == "EUR 3.00 cashback confirmed on your purchase of EUR 100.00: the purchase settled."
    # Their ids are the ledger's entries' ids: what a consumer dedupes by.
    history = httpx.get(f"{base_url}/v1/accounts/{english}/history", headers=api_headers([OPERATIONS]), timeout=5).json()
    assert {n["notification_id"] for n in en_read} <= {line["accrual_id"] for line in history["entries"]}
    assert [n["kind"] for n in pts_read] == ["CONFIRMED", "AVAILABLE", "EXPIRING"]
    notice = pts_read[2]
    assert notice["notification_id"].startswith(f"expiry_notice:{points}:{points}-1:")
    assert (notice["amount_minor"], notice["currency"], notice["reward_kind"]) == (200, "PTS", "POINTS")
    assert notice["expires_at"] > datetime.now(UTC) and notice["line"].startswith("You have 200 points left to use by ")
    assert processes.metric("worker", "cashback_notifications_total", {"kind": "EXPIRING", "language": "en"}) >= 1


def test_bad_messages_go_to_dead_letters_and_good_ones_still_count(pipeline) -> None:  # type: ignore[no-untyped-def]
    processes, base_url = pipeline
    env = processes.env
    rng = random.Random(7)
    account = "dlq-good"
    good_auth = card_record("AUTHORIZATION", 10_000, account_id=account, transaction_ref="dlq-ref", event_id="dlq-1")
    good_clearing = card_record("CLEARING", 10_000, account_id=account, transaction_ref="dlq-ref", event_id="dlq-2")
    card_number = _luhn_number(rng)
    auth_topic = env["TOPIC_PREFIX"] + "card.authorizations"

    def bad(**changes: Any) -> tuple[str, bytes, bytes]:
        record = card_record("AUTHORIZATION", 1_000, account_id="dlq-bad", event_id=f"bad-{uuid.uuid4().hex[:6]}")
        record.update(changes)
        return auth_topic, b"dlq-bad", wire(record)

    bad_messages = {
        "undecodable": (auth_topic, b"dlq-bad", struct.pack(">bI", 0, IDS["authorization_event.avsc"]) + b"\xff\xff\xff"),
        "bad_magic_byte": (auth_topic, b"dlq-bad", b"\x07garbage-bytes"),
        "unknown_schema_id": (auth_topic, b"dlq-bad", struct.pack(">bI", 0, 424_242) + b"\x02"),
        "invalid_mcc": bad(mcc="54A1"),
        "negative_amount": bad(amount_minor=-100, billing_amount_minor=-100),
        "unknown_currency": bad(billing_currency="XYZ"),
        "card_number_detected": bad(merchant_name=f"SHOP {card_number}"),
        "key_mismatch": (auth_topic, b"someone-else", wire(card_record("AUTHORIZATION", 1_000, account_id="dlq-bad"))),
    }
    messages = [(auth_topic, account.encode(), wire(good_auth))]
    messages += list(bad_messages.values())
    messages.append((topic_for(env, good_clearing), account.encode(), wire(good_clearing)))
    accruals_junk = (env["TOPIC_PREFIX"] + "accruals", account.encode(), b"not an accrual")
    messages.append(accruals_junk)
    asyncio.run(publish(env["KAFKA_BOOTSTRAP_SERVERS"], messages))

    wait_for_balance(
        base_url,
        account,
        balance_line(confirmed_minor=500, lifetime_earned_minor=500),
    )
    letters = asyncio.run(
        _read_dead_letters(env["KAFKA_BOOTSTRAP_SERVERS"], env["TOPIC_PREFIX"] + "dead-letters", len(bad_messages) + 1)
    )
    from_sink = [letter for letter in letters if letter["stage"] == "sink"]
    assert [(x["reason"], x["source_topic"], x["value"]) for x in from_sink] == [
        ("bad_magic_byte", accruals_junk[0], accruals_junk[2])
    ]
    by_reason = {letter["reason"]: letter for letter in letters if letter["stage"] == "matcher"}
    assert set(by_reason) == set(bad_messages)
    masked = card_number[:6] + "******" + card_number[-4:]  # the original kept, but the card number masked
    for reason, (topic, key, value) in bad_messages.items():
        letter = by_reason[reason]
        kept = value.replace(card_number.encode(), masked.encode())
        assert (letter["source_topic"], letter["key"], letter["value"], letter["stage"]) == (topic, key, kept, "matcher")
        assert len(letter["card_number_hashes"]) == (reason == "card_number_detected")
        assert letter["source_offset"] >= 0 and 0 <= letter["source_partition"] < 4
    assert by_reason["card_number_detected"]["detail"] == "field merchant_name: card_number_detected"
    assert card_number not in processes.log("worker")


def test_the_workers_own_clock_expires_an_old_authorisation(pipeline) -> None:  # type: ignore[no-untyped-def]
    """Time passing with no further event: an authorisation 31 days old (the offer's
    auth_expiry_days is 30) is expired by the worker's own clock ticks."""
    processes, base_url = pipeline
    from datetime import datetime, timedelta

    long_ago = datetime.now(UTC) - timedelta(days=31)
    account = f"clock-{uuid.uuid4().hex[:6]}"
    publish_records(
        processes.env,
        [card_record("AUTHORIZATION", 10_000, account_id=account, transaction_ref=f"{account}-ref", occurred_at=long_ago)],
    )
    wait_for_balance(
        base_url,
        account,
        balance_line(),
    )
    history = httpx.get(f"{base_url}/v1/accounts/{account}/history", headers=api_headers([OPERATIONS]), timeout=5).json()[
        "entries"
    ]
    assert [(line["entry_kind"], line["amount_minor"]) for line in history] == [("EXPIRED", 500), ("PENDING_CREATED", 500)]
    assert history[0]["source_event_id"].startswith(f"authorization_expiry:{account}:")


def test_the_same_event_id_on_two_accounts_is_two_events_each_paid_once(pipeline) -> None:  # type: ignore[no-untyped-def]
    """Event ids are the account's: a card processor's id seen on two accounts is two purchases,
    both paid, and no ledger conflict (the ledger's key is the account and the entry id)."""
    processes, base_url = pipeline
    tag = uuid.uuid4().hex[:6]
    accounts = [f"scope-{tag}-1", f"scope-{tag}-2"]
    records = [
        card_record("AUTHORIZATION", 10_000, account_id=account, transaction_ref=f"ref-{tag}", event_id=f"evt-{tag}")
        for account in accounts
    ]
    publish_records(processes.env, records)
    for account in accounts:
        wait_for_balance(
            base_url,
            account,
            PENDING_500,
        )
    assert asyncio.run(_ledger_count(processes.env["DATABASE_URL"], accounts)) == 2
    conflicts = httpx.get(f"{base_url}/v1/operations/ledger-conflicts", headers=api_headers([OPERATIONS]), timeout=5).json()[
        "conflicts"
    ]
    assert not [c for c in conflicts if c["account_id"] in accounts]


@pytest.mark.parametrize("compression", ["gzip", "snappy", "lz4", "zstd"])
def test_a_card_processor_compressing_its_batches_is_read(pipeline, compression: str) -> None:  # type: ignore[no-untyped-def]
    """Every codec Kafka's producers offer: without snappy, lz4 and zstd (aiokafka's extras), one
    compressed batch crashed the worker's fetcher (UnsupportedCodecError) and the worker with it."""
    processes, base_url = pipeline
    account = f"codec-{compression}-{uuid.uuid4().hex[:6]}"
    record = card_record("AUTHORIZATION", 10_000, account_id=account, transaction_ref=f"{account}-ref", event_id=f"{account}-1")

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=processes.env["KAFKA_BOOTSTRAP_SERVERS"], compression_type=compression)
        await producer.start()
        try:
            await producer.send_and_wait(topic_for(processes.env, record), wire(record), key=account.encode())
        finally:
            await producer.stop()

    asyncio.run(send())
    wait_for_balance(base_url, account, PENDING_500)


def test_a_card_processor_s_aborted_transaction_is_never_decided(pipeline) -> None:  # type: ignore[no-untyped-def]
    """A card processor producing in transactions (Kafka Streams with exactly-once, a transactional
    client): what it aborted is not a purchase. Faust's consumer read uncommitted records, so the
    aborted authorisation earned like any other. The committed one after it, on the same partition,
    is decided: once its balance shows, the aborted one before it was read past."""
    processes, base_url = pipeline
    account = f"aborted-{uuid.uuid4().hex[:6]}"
    aborted, committed = (
        card_record("AUTHORIZATION", 10_000, account_id=account, transaction_ref=f"{account}-{n}", event_id=f"{account}-{n}")
        for n in ("aborted", "committed")
    )

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=processes.env["KAFKA_BOOTSTRAP_SERVERS"], transactional_id=account)
        await producer.start()
        try:
            for record, end in ((aborted, producer.abort_transaction), (committed, producer.commit_transaction)):
                await producer.begin_transaction()
                await producer.send_and_wait(topic_for(processes.env, record), wire(record), key=account.encode())
                await end()
        finally:
            await producer.stop()

    asyncio.run(send())
    wait_for_balance(base_url, account, PENDING_500)
    assert asyncio.run(_ledger_count(processes.env["DATABASE_URL"], [account])) == 1
    # the commit marker after it holds no record: the partition is at its end, not one behind and read again for ever
    settings = Settings.from_env(processes.env)
    lag = {
        "group": settings.app_id,
        "topic": topic_for(processes.env, committed),
        "partition": str(account_partition(account, settings.topic_partitions)),
    }
    wait_until(lambda: processes.metric("worker", "cashback_consumer_lag_messages", lag) == 0, 45, "the partition at its end")


def test_the_latency_objective_counts_from_the_card_events_broker_time(pipeline) -> None:  # type: ignore[no-untyped-def]
    """A card event that reached the broker ten minutes before the worker could read it (a backlog):
    its entry is slower than every bucket of the sink's event-to-balance histogram but the last,
    although the worker sent the accrual a moment before the sink wrote it."""
    import time

    processes, base_url = pipeline
    account = f"late-{uuid.uuid4().hex[:6]}"

    def slower_than_300_s() -> float:
        count = processes.metric("sink", "cashback_ledger_latency_seconds_count") or 0.0
        return count - (processes.metric("sink", "cashback_ledger_latency_seconds_bucket", {"le": "300.0"}) or 0.0)

    before = slower_than_300_s()
    record = card_record("AUTHORIZATION", 10_000, account_id=account, transaction_ref=f"{account}-ref")
    ten_minutes_ago_ms = int(time.time() * 1000) - 600_000
    asyncio.run(
        publish_at(
            processes.env["KAFKA_BOOTSTRAP_SERVERS"],
            topic_for(processes.env, record),
            account.encode(),
            wire(record),
            ten_minutes_ago_ms,
        )
    )
    pending = {"pending_minor": 500, "confirmed_minor": 0, "available_minor": 0, "lifetime_earned_minor": 0}
    others = {"clawed_back_minor": 0, "donated_minor": 0, "held_minor": 0, "paid_out_minor": 0, "redeemed_minor": 0}
    wait_for_balance(base_url, account, {**pending, **others})
    # observed just after the commit the API already reads from
    wait_until(lambda: slower_than_300_s() == before + 1, 10, "one entry slower than 300 s", observe=slower_than_300_s)


def test_a_refund_of_a_purchase_never_seen_is_listed_and_counted(pipeline) -> None:  # type: ignore[no-untyped-def]
    """Reconciliation end to end: a refund naming a purchase the worker never saw reaches the operations listing
    (through the accruals topic and the sink), the sink's counter and the API's gauge; published twice, once."""
    processes, base_url = pipeline
    from prometheus_client.parser import text_string_to_metric_families

    account = f"recon-{uuid.uuid4().hex[:6]}"
    refund = card_record(
        "REFUND",
        2_500,
        account_id=account,
        transaction_ref=f"{account}-r",
        original_transaction_ref=f"{account}-never",
        processing_code="REFUND",
    )
    counted_before = processes.metric("sink", "cashback_reconciliation_items_total", {"kind": "unknown_refund"}) or 0.0
    publish_records(processes.env, [refund, refund])
    route = f"{base_url}/v1/operations/reconciliation/unknown_refund"
    ops = api_headers([OPERATIONS])

    def listed() -> list[dict[str, Any]]:
        return httpx.get(route, params={"account_id": account}, headers=ops, timeout=5).json()["items"]

    wait_until(lambda: listed(), 60, "the unknown refund in the operations listing")
    (item,) = listed()
    assert (item["item_id"], item["purchase_ref"], item["amount"]) == (
        f"{refund['event_id']}#reconciliation",
        f"{account}-never",
        "25.00 EUR",
    )
    assert "never seen by the worker" in item["detail"]

    def last_day() -> float:
        text = httpx.get(f"{base_url}/metrics", timeout=5).text
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "cashback_reconciliation_items_last_day" and s.labels.get("kind") == "unknown_refund"
        )

    wait_until(lambda: last_day() >= 1, 30, "the API's reconciliation gauge")
    counted = processes.metric("sink", "cashback_reconciliation_items_total", {"kind": "unknown_refund"}) or 0.0
    assert counted >= counted_before + 1
    assert httpx.get(route, headers=api_headers([ACCOUNTS_READ]), timeout=5).status_code == 403
