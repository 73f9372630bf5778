"""Factories that build valid objects by default; tests override only what they are about."""

from __future__ import annotations

import itertools
from datetime import datetime, timezone
from typing import Any

from stream.events import CardEvent, to_event
from stream.offers import Offer, OfferBook, parse_offer

_ids = itertools.count(1)
T0 = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)

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
