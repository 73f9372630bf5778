"""A card-processor simulator: seeded, realistic event streams, published at a chosen rate.

``generate`` is pure (a seed gives the same stream every time), so tests and the oracle can use
the very events the broker saw. Card tokens and account ids are synthetic; no card number is ever
generated except the deliberately bad "card number in a field" messages, whose digits are random
at run time and which must end in the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.codec import Codec
from stream.core.events import luhn_valid
from stream.producing import producer as make_producer
from stream.settings import Settings
from topics.catalogue import Catalogue, account_partition

# (mcc, merchants, typical amount in minor units, channel weights)
MERCHANTS: tuple[tuple[str, tuple[str, ...], int], ...] = (
    ("5411", ("Carrefour Market", "Lidl", "Monoprix", "Auchan"), 4_500),
    ("5812", ("Bistrot du Coin", "Chez Paul", "Le Zinc"), 3_200),
    ("5814", ("Burger Bar", "Sandwich Co"), 1_100),
    ("5541", ("TotalEnergies", "Esso Express"), 6_000),
    ("5912", ("Pharmacie Centrale",), 2_300),
    ("5732", ("Fnac", "Boulanger"), 25_000),
    ("5311", ("Galeries Lafayette", "Printemps"), 8_000),
    ("4111", ("RATP", "SNCF Transilien"), 250),
    ("5999", ("Marketplace Online",), 3_900),
    ("5814", ("Coffee",), 450),
    ("5942", ("Librairie Mollat", "Gibert"), 2_800),
)
# Online merchants judge "weekends" and "evenings" in their own zone, not the customer's.
MERCHANT_TIMEZONES = {"Marketplace Online": "America/New_York"}
SEGMENTS = (("vip", 10), ("new", 7))  # every 10th account is vip, every 7th new
ACTIVATED_OFFER = "weekend-dining-vip"  # an offer of deploy/offers/example.yaml that needs activation
CASH_MCCS = (("6011", "ATM Network"), ("7995", "Casino Royal"), ("6051", "Crypto Exchange"))
CHANNELS = ("IN_STORE", "CONTACTLESS", "ONLINE", "RECURRING")

# How a purchase unfolds, and how often (weights add up to 100).
SHAPES: tuple[tuple[str, int], ...] = (
    ("cleared", 58),
    ("declined", 5),
    ("partial_clearing", 5),
    ("partial_reversal", 4),
    ("incremental", 4),
    ("multi_clearing", 4),
    ("refund", 5),
    ("full_reversal", 3),
    ("chargeback", 2),
    ("force_post", 3),
    ("clearing_first", 2),
    ("cash", 3),
    ("cashback_at_pos", 2),
    ("tip", 2),  # cleared above the authorisation (restaurant tip, fuel)
    ("never_cleared", 2),  # expires by time passing (auth_expiry_days)
    ("issuer_expiry", 1),  # the issuer's expiry message
)
DAY = 86_400  # seconds


@dataclass(frozen=True)
class Scenario:
    seed: int = 1
    accounts: int = 1_000
    purchases: int = 10_000  # 0: endless
    bad_ratio: float = 0.002  # share of deliberately bad messages
    duplicate_ratio: float = 0.01  # share of events published twice
    conflict_ratio: float = 0.001  # share of events published again with the same id and other content
    start: datetime = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    step_seconds: int = 300  # simulated time between two purchases: 10,000 purchases span 35 days


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish: ``record`` is a card-event record, or ``raw`` is bytes as they are."""

    role: str  # "authorizations", "settlements", "profiles" or "activations"
    key: bytes
    record: dict[str, Any] | None = None
    raw: bytes | None = None
    bad: str | None = None  # which bad kind, for the tests


def _random_card_number(rng: random.Random) -> str:
    while True:
        digits = "".join(rng.choice("0123456789") for _ in range(16))
        if luhn_valid(digits):
            return digits


class _Purchase:
    def __init__(self, rng: random.Random, scenario: Scenario, number: int) -> None:
        self.rng = rng
        self.number = number
        # Heavy users: a fifth of the purchases come from one account in a hundred.
        heavy = max(1, scenario.accounts // 100)
        account = rng.randrange(heavy) if rng.random() < 0.2 else rng.randrange(scenario.accounts)
        self.account_id = account_id(account)
        self.card_token = f"tok-{account:06d}-{account % 3}"
        self.ref = f"ref-{scenario.seed}-{number:09d}"
        self.base = scenario.start + timedelta(seconds=number * scenario.step_seconds)
        self.step_seconds = scenario.step_seconds
        # A few accounts are billed in yen (no minor digits) or dinars (three).
        self.billing_currency, self.per_euro_cent = {0: ("JPY", (16, 10)), 1: ("BHD", (4, 1))}.get(account % 40, ("EUR", (1, 1)))
        self.shape = rng.choices([s for s, _ in SHAPES], [w for _, w in SHAPES])[0]
        if self.shape == "cash":
            self.mcc, self.merchant = rng.choice(CASH_MCCS)
            self.amount = rng.choice((2_000, 5_000, 10_000))
        else:
            self.mcc, merchants, typical = rng.choice(MERCHANTS)
            self.merchant = rng.choice(merchants)
            self.amount = max(50, int(rng.lognormvariate(0, 0.6) * typical))
        self.channel = rng.choice(CHANNELS)
        if self.mcc == "5812":  # people dine in the evening: 19:00 to 22:30 in Paris (UTC+1 in winter)
            evening = self.base.replace(hour=18, minute=0, second=0) + timedelta(minutes=rng.randint(0, 210))
            self.base = evening
        self.sequence = 0

    def record(self, event_type: str, amount: int, at: datetime, **extra: Any) -> dict[str, Any]:
        self.sequence += 1
        record = {
            "event_id": f"{self.ref}-{self.sequence}",
            "event_type": event_type,
            "occurred_at": at,
            "account_id": self.account_id,
            "card_token": self.card_token,
            "transaction_ref": self.ref,
            "original_transaction_ref": None,
            # ATM: a cash withdrawal; crypto exchange: quasi-cash; casino: a purchase at an excluded MCC.
            "processing_code": {"6011": "CASH_WITHDRAWAL", "6051": "QUASI_CASH"}.get(self.mcc, "PURCHASE"),
            "response_code": "00",
            "amount_minor": self.local(amount),
            "currency": self.billing_currency,
            "billing_amount_minor": self.local(amount),
            "billing_currency": self.billing_currency,
            "cashback_at_pos_minor": 0,
            "mcc": self.mcc,
            "merchant_id": f"m-{self.merchant.lower().replace(' ', '-')}",
            "merchant_name": self.merchant,
            "merchant_country": "US" if self.merchant in MERCHANT_TIMEZONES else "FR",
            "merchant_timezone": MERCHANT_TIMEZONES.get(self.merchant, "Europe/Paris"),
            "channel": self.channel,
        }
        if event_type in ("CLEARING", "REFUND", "CHARGEBACK", "CHARGEBACK_REVERSAL"):
            record.update(clearing_sequence=None, clearing_count=None)
        if "cashback_at_pos_minor" in extra:
            extra = dict(extra, cashback_at_pos_minor=self.local(extra["cashback_at_pos_minor"]))
        record.update(extra)
        return record

    def local(self, euro_cents: int) -> int:
        """An amount sized in euro cents, in the account's billing currency's minor units."""
        numerator, denominator = self.per_euro_cent
        return euro_cents * numerator // denominator

    def events(self) -> list[tuple[int, str, dict[str, Any]]]:
        """(delay in steps, role, record) of this purchase's life."""
        rng, amount, shape = self.rng, self.amount, self.shape

        def later(low_s: int, high_s: int) -> int:
            """Steps after the purchase, for a delay between low_s and high_s seconds."""
            return max(1, rng.randint(low_s, high_s) // self.step_seconds)

        def at(steps: int) -> datetime:
            return self.base + timedelta(seconds=steps * self.step_seconds)

        def auth(step: int, event_type: str, value: int, **extra: Any) -> tuple[int, str, dict[str, Any]]:
            return step, "authorizations", self.record(event_type, value, at(step), **extra)

        def settle(step: int, event_type: str, value: int, **extra: Any) -> tuple[int, str, dict[str, Any]]:
            return step, "settlements", self.record(event_type, value, at(step), **extra)

        clear_at, refund_at = later(DAY // 2, 3 * DAY), later(5 * DAY, 20 * DAY)
        if shape == "never_cleared":
            return [auth(0, "AUTHORIZATION", amount)]
        if shape == "issuer_expiry":
            return [auth(0, "AUTHORIZATION", amount), auth(later(7 * DAY, 8 * DAY), "AUTHORIZATION_EXPIRY", amount)]
        if shape == "declined":
            return [auth(0, "AUTHORIZATION", amount, response_code="51")]
        if shape == "force_post":
            return [settle(0, "CLEARING", amount)]
        if shape == "clearing_first":
            return [settle(0, "CLEARING", amount), auth(later(60, 3600), "AUTHORIZATION", amount)]
        if shape == "full_reversal":
            return [auth(0, "AUTHORIZATION", amount), auth(later(60, DAY), "AUTHORIZATION_REVERSAL", amount)]
        if shape == "tip":
            return [auth(0, "AUTHORIZATION", amount), settle(clear_at, "CLEARING", amount * 115 // 100)]
        if shape == "partial_clearing":
            return [auth(0, "AUTHORIZATION", amount), settle(clear_at, "CLEARING", amount * 4 // 5)]
        if shape == "partial_reversal":
            reversed_part = amount * 2 // 3
            return [
                auth(0, "AUTHORIZATION", amount),
                auth(later(60, 600), "AUTHORIZATION_REVERSAL", reversed_part),
                settle(clear_at, "CLEARING", amount - reversed_part),
            ]
        if shape == "incremental":
            extra = amount // 2
            return [
                auth(0, "AUTHORIZATION", amount),
                auth(later(60, 600), "INCREMENTAL_AUTHORIZATION", extra),
                settle(clear_at, "CLEARING", amount + extra),
            ]
        if shape == "multi_clearing":
            first = amount * 3 // 5
            return [
                auth(0, "AUTHORIZATION", amount),
                settle(clear_at, "CLEARING", first, clearing_sequence=1, clearing_count=2),
                settle(clear_at + later(DAY // 2, 2 * DAY), "CLEARING", amount - first, clearing_sequence=2, clearing_count=2),
            ]
        if shape == "cashback_at_pos":
            cash = 2_000
            total = amount + cash
            return [
                auth(0, "AUTHORIZATION", total, processing_code="PURCHASE_WITH_CASHBACK", cashback_at_pos_minor=cash),
                settle(clear_at, "CLEARING", total, processing_code="PURCHASE_WITH_CASHBACK", cashback_at_pos_minor=cash),
            ]
        events = [auth(0, "AUTHORIZATION", amount), settle(clear_at, "CLEARING", amount)]
        if shape == "refund":
            refunded = amount if rng.random() < 0.5 else amount * 2 // 5
            events.append(
                settle(
                    refund_at,
                    "REFUND",
                    refunded,
                    processing_code="REFUND",
                    original_transaction_ref=self.ref,
                    transaction_ref=f"{self.ref}-r",
                )
            )
        if shape == "chargeback":
            events.append(settle(refund_at, "CHARGEBACK", amount, original_transaction_ref=self.ref))
            if rng.random() < 0.5:
                events.append(
                    settle(
                        refund_at + later(10 * DAY, 30 * DAY), "CHARGEBACK_REVERSAL", amount, original_transaction_ref=self.ref
                    )
                )
        return events


# The Avro subject of each role's messages.
ROLE_SUBJECTS = {
    "authorizations": "authorization_event",
    "settlements": "settlement_event",
    "profiles": "account_profile",
    "activations": "offer_activation",
}


def bad_message(rng: random.Random, codec: Codec, good: dict[str, Any], role: str) -> Outgoing:
    """A message a worker must dead-letter, made from ``good``: undecodable, an unknown schema id,
    an invalid MCC, a negative amount, an unknown currency or a card number."""
    subject = ROLE_SUBJECTS[role]
    kind = rng.choice(("undecodable", "unknown_schema_id", "invalid_mcc", "negative_amount", "unknown_currency", "card_number"))
    key = good["account_id"].encode()
    bad = dict(good, event_id=good["event_id"] + "-bad")
    if kind == "undecodable":
        return Outgoing(role, key, raw=b"\x00\x00\x00\x00\x01" + bytes(rng.randrange(256) for _ in range(7)), bad=kind)
    if kind == "unknown_schema_id":
        return Outgoing(role, key, raw=struct.pack(">bI", 0, 999_999) + b"\x02\x04", bad=kind)
    if kind == "invalid_mcc":
        bad["mcc"] = "54A1"
    elif kind == "negative_amount":
        bad["amount_minor"] = bad["billing_amount_minor"] = -bad["amount_minor"]
    elif kind == "unknown_currency":
        bad["billing_currency"] = "XYZ"
    else:
        bad["merchant_name"] = f"PAN {_random_card_number(rng)}"
    return Outgoing(role, key, raw=codec.encode(subject, bad), bad=kind)


def account_id(number: int) -> str:
    return f"acct-{number:06d}"


def account_messages(scenario: Scenario) -> Iterator[Outgoing]:
    """Segments for some accounts, and an activation of the offer that needs one for every third
    account, a day before the first purchase: what the bank's systems would have published."""
    activated_at = scenario.start - timedelta(days=1)
    for number in range(scenario.accounts):
        account = account_id(number)
        segments = [name for name, every in SEGMENTS if number % every == 0]
        if segments:
            record = {"account_id": account, "segments": segments, "updated_at": activated_at}
            yield Outgoing("profiles", account.encode(), record=record)
        if number % 3 == 0:
            record = {"account_id": account, "offer_id": ACTIVATED_OFFER, "active": True, "changed_at": activated_at}
            yield Outgoing("activations", f"{account}:{ACTIVATED_OFFER}".encode(), record=record)


def generate(scenario: Scenario, codec: Codec | None = None) -> Iterator[Outgoing]:
    """The scenario's messages in publication order. Purchases start one step apart; their later
    events (clearings, refunds...) are interleaved by step. With a codec, bad messages are mixed in."""
    rng = random.Random(scenario.seed)
    yield from account_messages(scenario)
    queue: list[tuple[int, int, str, dict[str, Any]]] = []
    order = 0
    number = 0
    while scenario.purchases == 0 or number < scenario.purchases or queue:
        if scenario.purchases == 0 or number < scenario.purchases:
            purchase = _Purchase(rng, scenario, number)
            for delay, role, record in purchase.events():
                heapq.heappush(queue, (number + delay, order, role, record))
                order += 1
            number += 1
        while queue and (queue[0][0] <= number or (scenario.purchases and number >= scenario.purchases)):
            _, _, role, record = heapq.heappop(queue)
            key = record["account_id"].encode()
            yield Outgoing(role, key, record=record)
            if rng.random() < scenario.duplicate_ratio:
                yield Outgoing(role, key, record=record)
            if rng.random() < scenario.conflict_ratio:  # same id, other content: quarantined, never credited
                yield Outgoing(
                    role,
                    key,
                    record=dict(
                        record,
                        amount_minor=record["amount_minor"] + 100,
                        billing_amount_minor=record["billing_amount_minor"] + 100,
                    ),
                    bad="conflict",
                )
            if codec is not None and rng.random() < scenario.bad_ratio:
                yield bad_message(rng, codec, record, role)


async def publish(
    settings: Settings,
    codec: Codec,
    topics: Catalogue,
    scenario: Scenario,
    rate: float,
    stop: asyncio.Event,
    progress: bool = True,
) -> int:
    """Publish the scenario at ``rate`` events per second (0: as fast as possible); return the count."""
    from tqdm import tqdm

    names = {
        "authorizations": topics.authorizations.name,
        "settlements": topics.settlements.name,
        "profiles": topics.profiles.name,
        "activations": topics.activations.name,
    }
    producer = make_producer(settings, linger_ms=5)
    await producer.start()
    bar = tqdm(total=None, unit="ev", disable=not progress, file=sys.stderr, desc="card events", mininterval=0.5)
    sent = 0
    started = time.monotonic()
    try:
        for message in generate(scenario, codec):
            if stop.is_set():
                break
            value = message.raw if message.raw is not None else codec.encode(ROLE_SUBJECTS[message.role], message.record or {})
            # Account messages go where the account's card events go (topics.catalogue.account_partition).
            partition = (
                account_partition(message.record["account_id"], topics.profiles.partitions)
                if message.role in ("profiles", "activations") and message.record
                else None
            )
            await producer.send(names[message.role], value, key=message.key, partition=partition)
            sent += 1
            bar.update(1)
            if rate > 0 and sent % max(1, int(rate // 20)) == 0:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await producer.flush()
    finally:
        bar.close()
        await producer.stop()
    return sent
