"""Factories that build valid objects by default; tests override only what they are about."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

from stream.core.events import CardEvent, to_event
from stream.core.offer_parsing import parse_offer
from stream.core.offers import Offer, OfferBook

_ids = itertools.count(1)
T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)

AUTH_TYPES = {"AUTHORIZATION", "INCREMENTAL_AUTHORIZATION", "AUTHORIZATION_REVERSAL", "AUTHORIZATION_EXPIRY"}


def card_record(event_type: str = "AUTHORIZATION", amount_minor: int = 10_000, **overrides: Any) -> dict[str, Any]:
    """A valid card-event record (Avro-shaped dict). Settlement-only fields appear for settlements."""
    record: dict[str, Any] = {
        "event_id": f"evt-{next(_ids):08d}",
        "event_type": event_type,
        "occurred_at": T0,
        "account_id": "acct-1",
        "card_token": "tok-abc",
        "transaction_ref": "txn-1",
        "original_transaction_ref": None,
        "processing_code": "PURCHASE",
        "response_code": "00",
        "amount_minor": amount_minor,
        "currency": "EUR",
        "billing_amount_minor": amount_minor,
        "billing_currency": "EUR",
        "cashback_at_pos_minor": 0,
        "mcc": "5411",
        "merchant_id": "m-grocer",
        "merchant_name": "Grocer",
        "merchant_country": "FR",
        "merchant_timezone": "Europe/Paris",
        "channel": "IN_STORE",
    }
    if event_type not in AUTH_TYPES:
        record.update(clearing_sequence=None, clearing_count=None)
    if "billing_amount_minor" not in overrides and "amount_minor" in overrides:
        overrides["billing_amount_minor"] = overrides["amount_minor"]
    record.update(overrides)
    return record


def card_event(event_type: str = "AUTHORIZATION", amount_minor: int = 10_000, **overrides: Any) -> CardEvent:
    return to_event(card_record(event_type, amount_minor, **overrides))


def offer(**overrides: Any) -> Offer:
    raw: dict[str, Any] = {"offer_id": "grocery-5", "name": "5% at supermarkets", "rate_bps": 500, "mccs": ["5411"]}
    raw.update(overrides)
    return parse_offer(raw)


def book(*offers: Offer) -> OfferBook:
    return OfferBook.of(offers or (offer(),))


# --- rules engine helpers (added for the unit tests; the functions above are unchanged) ---------


def run_events(
    events: Any,
    offers: OfferBook | None = None,
    state: dict[str, Any] | None = None,
    profile: Any = None,
    budget: dict[str, int] | None = None,
) -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[Any]]:
    """Feed ``events`` in order through the pure rules engine; return (final state, all entries, outcomes).
    ``profile`` is the account's AccountProfile; ``budget`` the remaining budget per offer, updated
    in place by each decision's budget deltas (as the caller coordinating budgets would)."""
    state, decisions = run_decisions(events, offers, state, profile, budget)
    return state, [e for d in decisions for e in d.entries], [d.outcome for d in decisions]


def run_decisions(
    events: Any,
    offers: OfferBook | None = None,
    state: dict[str, Any] | None = None,
    profile: Any = None,
    budget: dict[str, int] | None = None,
) -> tuple[dict[str, Any] | None, list[Any]]:
    """Like ``run_events``, returning every Decision (entries, outcome, budget deltas)."""
    from stream.core.rules import decide  # imported here so the factories above never depend on the engine

    offers = offers if offers is not None else book()
    decisions = []
    for event in events:
        decision = decide(event, offers, state, profile, budget)
        state = decision.state
        for offer_id, delta in decision.budget_deltas.items():
            if budget is not None:
                budget[offer_id] = budget.get(offer_id, offers.get(offer_id).budget_minor or 0) - delta  # type: ignore[union-attr]
        decisions.append(decision)
    return state, decisions


def legs(entries: Any) -> list[tuple[str, str, str, int]]:
    """Entries as (kind, debit_book, credit_book, amount_minor): what a lifecycle test asserts. Reconciliation
    items are left out (``items`` lists them; tests/unit/test_reconciliation_items.py asserts them)."""
    return [(e.entry_kind, e.debit_book, e.credit_book, e.amount_minor) for e in entries if e.entry_kind != "RECONCILIATION"]


def items(entries: Any) -> list[tuple[str, str]]:
    """The reconciliation items among entries, as (kind, accrual id)."""
    return [(e.explanation.reason, e.accrual_id) for e in entries if e.entry_kind == "RECONCILIATION"]


KEY = ("acct-1", "CASH", "EUR")  # the balances key of the factories' account


def profile(*segments: str, **activations: datetime) -> Any:
    """An AccountProfile: its segments, and offer activations as ``offer_id=activated_at``
    (use ``**{"offer-id": at}`` for ids that are not Python names)."""
    from stream.core.rules import AccountProfile

    return AccountProfile(frozenset(segments), activations)


def totals(
    pending: int = 0,
    confirmed: int = 0,
    available: int = 0,
    lifetime: int = 0,
    clawed: int = 0,
    donated: int = 0,
    held: int = 0,
    paid_out: int = 0,
    redeemed: int = 0,
) -> dict[str, int]:
    """One balances() row, every field named, zero unless given."""
    return {
        "pending_minor": pending,
        "confirmed_minor": confirmed,
        "available_minor": available,
        "lifetime_earned_minor": lifetime,
        "clawed_back_minor": clawed,
        "donated_minor": donated,
        "held_minor": held,
        "paid_out_minor": paid_out,
        "redeemed_minor": redeemed,
    }


def auth(amount_minor: int = 10_000, **overrides: Any) -> CardEvent:
    return card_event("AUTHORIZATION", amount_minor, **overrides)


def clearing(amount_minor: int = 10_000, **overrides: Any) -> CardEvent:
    return card_event("CLEARING", amount_minor, **overrides)


def after_purchase(event_type: str, amount_minor: int, **overrides: Any) -> CardEvent:
    """A refund, chargeback or chargeback reversal pointing at purchase txn-1 under its own reference."""
    fields: dict[str, Any] = {
        "processing_code": "REFUND" if event_type == "REFUND" else "PURCHASE",
        "transaction_ref": f"{event_type.lower()}-1",
        "original_transaction_ref": "txn-1",
        **overrides,
    }
    return card_event(event_type, amount_minor, **fields)


def card_text_fields() -> list[str]:
    """Every text field of the card-event schemas (both of them, in schema order): where a careless
    card processor could put a card number."""
    import json
    from pathlib import Path

    names: list[str] = []
    for name in ("authorization_event.avsc", "settlement_event.avsc"):
        for field in json.loads((Path(__file__).parent.parent / "schemas" / name).read_text())["fields"]:
            types = field["type"] if isinstance(field["type"], list) else [field["type"]]
            if "string" in types and field["name"] not in names:
                names.append(field["name"])
    return names


def generated_card_number(length: int = 16, first: str = "4", rng: Any = None) -> str:
    """A Luhn-valid number made up at run time (no card number is written in the tests), by default
    16 digits in Visa's range, so that it counts in identifiers too."""
    import random

    from stream.core.card_numbers import luhn_valid

    draw = rng or random.SystemRandom()
    body = first + "".join(draw.choice("0123456789") for _ in range(length - len(first) - 1))
    return body + next(digit for digit in "0123456789" if luhn_valid(body + digit))


def fetched_message(tp: Any, offset: int) -> Any:
    """A message of ``tp`` at ``offset`` as Faust's consumer hands it on (key ``acct-1``, an empty value)."""
    import time

    from faust.types import Message

    return Message(
        topic=tp.topic,
        partition=tp.partition,
        offset=offset,
        timestamp=time.time(),
        timestamp_type=0,
        headers=None,
        key=b"acct-1",
        value=b"",
        checksum=None,
    )
