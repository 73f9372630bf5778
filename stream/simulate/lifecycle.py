"""The simulator's lifecycle mix: what a purchase looks like and how it unfolds.

The merchants (with their MCCs, typical amounts and time zones), the shapes a purchase's life
takes and how often (``SHAPES``), the ``Scenario`` a run is drawn from (seed, sizes, ratios,
timeline), the synthetic account ids, and ``Purchase``: one purchase drawn from a seeded random
generator, with its card events (authorisations, clearings, refunds...) timed in steps after it.
Pure and seeded: ``stream.simulate.ordering`` interleaves the purchases into the stream. Kept apart
from the stream and the bad messages because a new lifecycle case changes only this.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

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
UNKNOWN_FOLLOW_UP_EVERY = 4  # of the refund and chargeback purchases, every 4th by number has one more of an unknown purchase


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
    burst_every: int = 500  # one burst of small purchases (an abuse the rules hold) per so many purchases; 0: none


def account_id(number: int) -> str:
    return f"acct-{number:06d}"


class Purchase:
    """One purchase of the mix: its account, card, merchant, amount and shape, drawn from ``rng``."""

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
        if shape in ("refund", "chargeback") and self.number % UNKNOWN_FOLLOW_UP_EVERY == 0:
            # A refund or a chargeback of a purchase made before the card was enrolled: the worker never saw it
            # (a reconciliation item, stream.reconciliation). Chosen by number, not drawn: the stream is otherwise
            # the one it was (made last: the purchase's other event ids are unchanged).
            kind = "REFUND" if shape == "refund" else "CHARGEBACK"
            events.append(
                settle(
                    refund_at,
                    kind,
                    amount,
                    processing_code="REFUND" if kind == "REFUND" else "PURCHASE",
                    original_transaction_ref=f"{self.ref}-before-enrolment",
                    transaction_ref=f"{self.ref}-u",
                )
            )
        return events


BURST_SIZE = 6  # the abuse rules' default burst is 5 purchases under 10.00 at one merchant in an hour
BURST_GAP_MINUTES = 4


def burst(scenario: Scenario, number: int) -> list[tuple[int, str, dict[str, Any]]]:
    """(delay in steps, role, record) of a burst of small purchases at one merchant (the abuse rule
    ``purchase_burst`` holds their rewards: ``stream.core.holds``): one EUR account buys
    ``BURST_SIZE`` coffees ``BURST_GAP_MINUTES`` apart, each cleared an hour later. Drawn from its
    own generator, so the rest of the stream is the one it was without bursts."""
    rng = random.Random(f"burst-{scenario.seed}-{number}")
    account = rng.randrange(scenario.accounts)
    while account % 40 < 2 and scenario.accounts > 2:  # the yen and dinar accounts (``Purchase``): a euro one
        account = rng.randrange(scenario.accounts)
    start = scenario.start + timedelta(seconds=number * scenario.step_seconds)
    events: list[tuple[int, str, dict[str, Any]]] = []
    for n in range(BURST_SIZE):
        purchase = Purchase(rng, scenario, number)  # its draws are this generator's; what matters is set below
        purchase.account_id, purchase.card_token = account_id(account), f"tok-{account:06d}-{account % 3}"
        purchase.billing_currency, purchase.per_euro_cent = "EUR", (1, 1)
        purchase.ref = f"burst-{scenario.seed}-{number:09d}-{n}"
        purchase.mcc, purchase.merchant, purchase.channel = "5814", "Coffee", "CONTACTLESS"
        bought = start + timedelta(minutes=BURST_GAP_MINUTES * n)
        amount = rng.randint(250, 480)
        after = (bought - start).total_seconds()
        events.append((int(after) // scenario.step_seconds, "authorizations", purchase.record("AUTHORIZATION", amount, bought)))
        cleared = bought + timedelta(hours=1)
        events.append((int(after + 3600) // scenario.step_seconds, "settlements", purchase.record("CLEARING", amount, cleared)))
    return events
