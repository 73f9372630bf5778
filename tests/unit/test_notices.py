"""Customer notifications (``stream.core.notices``, issue 12 part 3): which entries notify, the
lines in English and French (amounts in each unit's minor digits, points, rates, dates), the
engine's expiry notice (made once, with a deterministic id), the schemas, and the profile's language."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from schemas.codec import Codec
from stream.core.eligibility import NO_PROFILE, AccountProfile
from stream.core.entries import Entry, Explanation
from stream.core.events import EventType
from stream.core.lifecycle import DAY_MS, due_events
from stream.core.notices import (
    AVAILABLE,
    CLAWED_BACK,
    CONFIRMED,
    EARNED,
    EXPIRING,
    KINDS,
    ExpiryNotice,
    format_amount,
    format_rate,
    from_entry,
    from_notice,
    language_of,
    paid_line,
)
from stream.core.offer_parsing import parse_offer
from stream.core.offers import OfferBook
from stream.core.outcomes import Outcome
from stream.core.profiles import apply_segments, to_account_profile
from stream.core.rules import decide
from stream.core.state import Lot
from tests.factories import T0, book, card_event, offer, run_decisions

NNBSP, NBSP = "\u202f", "\u00a0"
CODEC = Codec()


def entry(kind: str, amount: int = 500, unit: str = "EUR", reward_kind: str = "CASH", **explained: Any) -> Entry:
    books = {
        "PENDING_CREATED": ("EXPENSE", "PENDING"),
        "CONFIRMED": ("PENDING", "CONFIRMED"),
        "MADE_AVAILABLE": ("CONFIRMED", "AVAILABLE"),
        "CLAWED_BACK": ("AVAILABLE", "EXPENSE"),
        "RELEASED": ("PENDING", "EXPENSE"),
        "HOLD_RELEASED": ("HELD", "AVAILABLE"),
    }.get(kind, ("EXPENSE", "PENDING"))
    explanation = {
        "reason": "earned",
        "detail": "pending 5.00% of 100.00 EUR = 5.00 EUR",
        "basis_minor": 10_000,
        "basis_currency": "EUR",
        "rate_bps": 500,
        "rounding": "down",
        "carried_remainder": 0,
        "force_post": False,
    } | explained
    return Entry(
        "evt-1#0",
        "evt-1",
        "acct-1",
        "t1",
        kind,
        *books,
        amount,
        unit,
        reward_kind,
        "grocery-5",
        1,
        None,
        1_000,
        Explanation(**explanation),
    )


# --- amounts, rates, dates ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "unit", "english", "french"),
    [
        (500, "EUR", "EUR 5.00", f"5,00{NBSP}€"),
        (123_456, "EUR", "EUR 1,234.56", f"1{NNBSP}234,56{NBSP}€"),
        (7, "EUR", "EUR 0.07", f"0,07{NBSP}€"),
        (500, "JPY", "JPY 500", f"500{NBSP}¥"),  # no minor digits
        (1_250, "BHD", "BHD 1.250", f"1,250{NBSP}BHD"),  # three
        (1, "PTS", "1 point", "1 point"),
        (1_200, "PTS", "1,200 points", f"1{NNBSP}200 points"),
        (999, "USD", "USD 9.99", f"9,99{NBSP}$"),
    ],
)
def test_amounts_use_the_units_minor_digits(amount: int, unit: str, english: str, french: str) -> None:
    assert format_amount(amount, unit, "en") == english
    assert format_amount(amount, unit, "fr") == french


@pytest.mark.parametrize(("rate_bps", "english", "french"), [(500, "5%", "5 %"), (250, "2.5%", "2,5 %"), (25, "0.25%", "0,25 %")])
def test_rates(rate_bps: int, english: str, french: str) -> None:
    assert format_rate(rate_bps, "en") == english
    assert format_rate(rate_bps, "fr") == french.replace(" ", NNBSP)


# --- which entries notify, and their lines -------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "notified", "english", "french"),
    [
        (
            "PENDING_CREATED",
            EARNED,
            "You earned EUR 5.00 cashback (5% of EUR 100.00), pending until the purchase settles.",
            f"Vous avez gagné 5,00{NBSP}€ de cashback (5{NNBSP}% de 100,00{NBSP}€), en attente du règlement de l'achat.",
        ),
        (
            "CONFIRMED",
            CONFIRMED,
            "EUR 5.00 cashback confirmed on your purchase of EUR 100.00: the purchase settled.",
            f"Confirmation de 5,00{NBSP}€ de cashback sur votre achat de 100,00{NBSP}€{NNBSP}: l'achat est réglé.",
        ),
        (
            "MADE_AVAILABLE",
            AVAILABLE,
            "EUR 5.00 cashback now available to use.",
            f"Désormais à votre disposition{NNBSP}: 5,00{NBSP}€ de cashback.",
        ),
        (
            "HOLD_RELEASED",
            AVAILABLE,
            "EUR 5.00 cashback now available to use.",
            f"Désormais à votre disposition{NNBSP}: 5,00{NBSP}€ de cashback.",
        ),
    ],
)
def test_each_kind_in_both_languages(kind: str, notified: str, english: str, french: str) -> None:
    for language, line in (("en", english), ("fr", french)):
        made = from_entry(entry(kind), language)
        assert made is not None
        assert (made.kind, made.line, made.language) == (notified, line, language)
        assert made.notification_id == "evt-1#0"  # the entry's id: a repeat carries the same
        assert (made.account_id, made.amount_minor, made.currency, made.offer_id, made.occurred_at) == (
            "acct-1",
            500,
            "EUR",
            "grocery-5",
            1_000,
        )


@pytest.mark.parametrize(
    ("reason", "english", "french"),
    [
        (
            "refund",
            "EUR 2.00 cashback taken back after a refund of the purchase.",
            "Reprise de 2,00 € de cashback à la suite du remboursement de l'achat.",
        ),
        (
            "chargeback",
            "EUR 2.00 cashback taken back after a chargeback of the purchase.",
            "Reprise de 2,00 € de cashback à la suite de la contestation de l'achat.",
        ),
    ],
)
def test_clawed_back_says_why(reason: str, english: str, french: str) -> None:
    clawed = entry("CLAWED_BACK", 200, reason=reason, basis_minor=0)
    assert from_entry(clawed, "en").line == english  # type: ignore[union-attr]
    assert from_entry(clawed, "fr").line == french.replace(" €", NBSP + "€")  # type: ignore[union-attr]


def test_points_store_credit_and_charity_lines() -> None:
    points = entry("PENDING_CREATED", 200, "PTS", "POINTS", rate_bps=0)
    assert (
        from_entry(points, "en").line == "You earned 200 points on a purchase of EUR 100.00, pending until the purchase settles."
    )  # type: ignore[union-attr]
    assert (
        from_entry(points, "fr").line
        == f"Vous avez gagné 200 points sur un achat de 100,00{NBSP}€, en attente du règlement de l'achat."
    )  # type: ignore[union-attr]
    credit = entry("MADE_AVAILABLE", 300, "EUR", "STORE_CREDIT")
    assert from_entry(credit, "en").line == "EUR 3.00 store credit now available to use."  # type: ignore[union-attr]
    assert from_entry(credit, "fr").line == f"Désormais à votre disposition{NNBSP}: 3,00{NBSP}€ d'avoir."  # type: ignore[union-attr]
    given = entry("MADE_AVAILABLE", 100, "EUR", "CHARITY")
    assert from_entry(given, "en").line == "EUR 1.00 given to charity on your behalf."  # type: ignore[union-attr]
    assert from_entry(given, "fr").line == f"Don de 1,00{NBSP}€ remis à l'association en votre nom."  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["RELEASED", "EXPIRED", "NOT_EARNED", "RECONCILIATION", "HELD", "AVAILABLE_EXPIRED", "ADJUSTED"])
def test_other_entries_tell_the_customer_nothing(kind: str) -> None:
    assert from_entry(entry(kind), "en") is None


def test_a_hold_released_to_nowhere_spendable_tells_nothing() -> None:
    forfeited = msgspec.structs.replace(entry("HOLD_RELEASED"), credit_book="EXPENSE")
    assert from_entry(forfeited, "fr") is None


def test_the_expiry_notice_line_names_the_last_day() -> None:
    expires = int(datetime(2027, 1, 15, tzinfo=UTC).timestamp() * 1000)  # usable through 14 January
    notice = ExpiryNotice(
        "n#grocery-points:PTS", "acct-1", "grocery-points", "POINTS", "PTS", 1_200, expires - 7 * DAY_MS, expires
    )
    english, french = from_notice(notice, "en"), from_notice(notice, "fr")
    assert english.line == "You have 1,200 points left to use by 14 January 2027."
    assert french.line == f"Il vous reste 1{NNBSP}200 points à utiliser au plus tard le 14 janvier 2027."
    assert (english.kind, english.expires_at, english.notification_id) == (EXPIRING, expires, "n#grocery-points:PTS")
    credit = ExpiryNotice("n#c:EUR", "acct-1", "c", "STORE_CREDIT", "EUR", 550, 0, expires)
    assert from_notice(credit, "en").line == "You have EUR 5.50 store credit left to use by 14 January 2027."


def test_paid_is_defined_for_the_payout_part() -> None:
    assert KINDS[-1] == "PAID"
    assert paid_line(500, "EUR", "CASH", "en") == "EUR 5.00 cashback paid to your account."
    assert paid_line(500, "EUR", "CASH", "fr") == f"Versement de 5,00{NBSP}€ de cashback sur votre compte."


def test_language_falls_back_to_the_default() -> None:
    assert language_of("fr") == "fr"
    assert language_of(None) == "en"
    assert language_of(None, "fr") == "fr"
    assert language_of("de", "fr") == "fr"  # a language not written here: the bank's default


# --- the engine's expiry notice ------------------------------------------------------------------

POINTS = {
    "offer_id": "grocery-points",
    "name": "2 points per euro",
    "reward_kind": "POINTS",
    "points_per_unit": 2,
    "currency": "EUR",
    "mccs": ["5411"],
    "pending_days": 0,
    "available_expiry_days": 30,
    "expiry_notice_days": 7,
}


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def test_the_notice_falls_due_before_the_expiry_and_is_made_once() -> None:
    offers = OfferBook.of([parse_offer(POINTS)])
    state, _ = run_decisions([card_event("CLEARING", 10_000, occurred_at=T0, transaction_ref="t1")], offers)
    assert state is not None
    (lot,) = state.lots
    assert lot.notice_ms == lot.expires_ms - 7 * DAY_MS and not lot.noticed
    assert state.due_ms == lot.notice_ms
    assert due_events(state, "acct-1", lot.notice_ms - 1) == []
    (event,) = due_events(state, "acct-1", lot.notice_ms + DAY_MS)  # a tick a day late: at the notice time all the same
    assert event.event_type is EventType.EXPIRY_NOTICE
    assert event.event_id == f"expiry_notice:acct-1:t1:{lot.notice_ms}"
    assert event.occurred_at_ms == lot.notice_ms
    decision = decide(event, offers, state)
    assert decision.outcome is Outcome.EXPIRY_NOTICED and decision.entries == ()
    (notice,) = decision.notices
    assert notice == ExpiryNotice(
        f"expiry_notice:acct-1:t1:{lot.notice_ms}#grocery-points:PTS",
        "acct-1",
        "grocery-points",
        "POINTS",
        "PTS",
        200,
        lot.notice_ms,
        lot.expires_ms,
    )
    noticed = decision.state
    assert noticed.lots[0].noticed and noticed.due_ms == lot.expires_ms  # next: the expiry itself
    # Never again: not due on a later tick, and the same event again is a duplicate that tells nothing.
    assert [e.event_type for e in due_events(noticed, "acct-1", lot.expires_ms - 1)] == []
    again = decide(event, offers, noticed)
    assert again.outcome is Outcome.DUPLICATE and again.notices == ()
    # Stored and read back noticed; a lot stored before ``noticed`` was kept reads not noticed.
    stored = msgspec.msgpack.encode(noticed.lots)
    assert msgspec.msgpack.decode(stored, type=list[Lot]) == noticed.lots
    # (``noticed`` and ``redeemed``, appended after it, left out)
    older = msgspec.msgpack.encode([list(msgspec.structs.astuple(lot))[:-2] for lot in noticed.lots])
    assert msgspec.msgpack.decode(older, type=list[Lot])[0].noticed is False


def test_a_late_tick_gives_notice_then_expires() -> None:
    offers = OfferBook.of([parse_offer(POINTS)])
    state, _ = run_decisions([card_event("CLEARING", 10_000, occurred_at=T0, transaction_ref="t1")], offers)
    assert state is not None
    expires = state.lots[0].expires_ms
    kinds = [e.event_type for e in due_events(state, "acct-1", expires + DAY_MS)]
    assert kinds == [EventType.EXPIRY_NOTICE, EventType.AVAILABLE_EXPIRY]  # in time order, whenever the tick comes


def test_no_notice_without_notice_days_and_cash_never() -> None:
    offers = OfferBook.of([parse_offer({**POINTS, "expiry_notice_days": None})])
    state, _ = run_decisions([card_event("CLEARING", 10_000, occurred_at=T0, transaction_ref="t1")], offers)
    assert state is not None and state.lots[0].notice_ms is None
    assert [e.event_type for e in due_events(state, "acct-1", state.lots[0].expires_ms)] == [EventType.AVAILABLE_EXPIRY]
    cash, _ = run_decisions([card_event("CLEARING", 10_000, occurred_at=T0, transaction_ref="t1")], book(offer(pending_days=0)))
    assert cash is not None and cash.lots == []


def test_a_lot_used_up_before_its_notice_tells_nothing() -> None:
    offers = OfferBook.of([parse_offer(POINTS)])
    events = [
        card_event("CLEARING", 10_000, occurred_at=T0, transaction_ref="t1"),
        card_event(
            "REFUND",
            10_000,
            occurred_at=T0 + timedelta(days=2),
            transaction_ref="r1",
            original_transaction_ref="t1",
            event_id="r1",
        ),
    ]
    state, _ = run_decisions(events, offers)
    assert state is not None and state.lots == []
    assert due_events(state, "acct-1", _ms(T0 + timedelta(days=60))) == []


# --- schemas and the profile's language ----------------------------------------------------------


def test_a_notification_round_trips_through_its_schema() -> None:
    made = from_entry(entry("PENDING_CREATED"), "fr")
    assert made is not None
    raw = CODEC.encode("notification", made.record())
    assert int.from_bytes(raw[1:5], "big") == 22
    _, decoded = CODEC.decode(raw, expected_subject="notification")
    assert decoded["line"] == made.line and decoded["kind"] == "EARNED" and decoded["expires_at"] is None
    assert decoded["occurred_at"] == datetime.fromtimestamp(1, tz=UTC)


def test_profile_v2_carries_the_language_and_v1_bytes_read_as_the_default() -> None:
    record = {"account_id": "acct-1", "segments": ["vip"], "updated_at": T0, "language": "fr"}
    raw = CODEC.encode("account_profile", record)
    assert int.from_bytes(raw[1:5], "big") == 23
    _, decoded = CODEC.decode(raw, expected_subject="account_profile")
    profile = apply_segments(None, decoded)
    assert to_account_profile(profile).language == "fr"
    assert to_account_profile(profile).segments == frozenset({"vip"})
    # bytes of v1 (id 8): no language
    import io

    import fastavro

    from schemas.codec import SCHEMA_DIR

    v1 = fastavro.parse_schema(__import__("json").loads((SCHEMA_DIR / "account_profile.avsc").read_text()))
    body = io.BytesIO()
    fastavro.schemaless_writer(body, v1, {"account_id": "acct-1", "segments": [], "updated_at": T0})
    _, old = CODEC.decode(b"\x00" + (8).to_bytes(4, "big") + body.getvalue(), expected_subject="account_profile")
    assert old["language"] is None
    assert to_account_profile(apply_segments(profile, old)).language is None  # a new profile without one: the default
    assert "language" not in apply_segments(profile, None)  # a tombstone erases it


def test_an_account_without_a_profile_shares_the_one_empty_profile() -> None:
    """Most accounts have no profile, and the worker keeps the profiles it read (65,536): each had its own
    empty one, about 170 bytes (tracemalloc)."""
    assert to_account_profile(None) is to_account_profile({}) is NO_PROFILE
    assert NO_PROFILE == AccountProfile() and NO_PROFILE.language is None and not NO_PROFILE.activations


# --- the simulator's path ------------------------------------------------------------------------


def test_the_simulated_stream_tells_customers_in_both_languages_including_expiring_points() -> None:
    """``make run``'s stream with the example offers: profiles in French and English, and the
    example points offer (books-points) expiring with a notice, so EXPIRING notifications are made."""
    from pathlib import Path

    from stream.backtest import Replay
    from stream.offer_admin import load_offers_file
    from stream.simulate import Scenario, generate

    offers = OfferBook.of(load_offers_file(Path(__file__).resolve().parents[2] / "deploy" / "offers" / "example.yaml"))
    scenario = Scenario(seed=1, purchases=2_000)
    languages = {m.record["language"] for m in generate(scenario) if m.role == "profiles" and m.record}
    assert languages == {"fr", "en"}
    replay = Replay(offers, keep_notifications=True)
    for message in generate(scenario):
        replay.feed(message)
    replay.pass_time(scenario.start + timedelta(days=60))
    told = replay.notifications()
    assert {n.kind for n in told} == {EARNED, CONFIRMED, AVAILABLE, CLAWED_BACK, EXPIRING}
    assert {n.language for n in told} == {"fr", "en"}
    expiring = [n for n in told if n.kind == EXPIRING]
    assert expiring and all(n.offer_id == "books-points" and n.currency == "PTS" for n in expiring)
    assert len({n.notification_id for n in told}) == len(told)  # each once


def test_a_notification_names_no_card_and_nothing_personal_but_the_account() -> None:
    """What a purchase says of the card and the merchant's name never reaches a notification: only
    the account id and the merchant id the ledger keeps (the card-number search of
    tests/integration/test_no_card_number_kept.py reads the topic too)."""
    event = card_event(
        "AUTHORIZATION", 10_000, card_token="tok-secret-card", merchant_name="Chez Personne Privée", transaction_ref="t9"
    )
    (earned,) = decide(event, book(), None).entries
    made = from_entry(earned, "fr")
    assert made is not None
    raw = CODEC.encode("notification", made.record())
    assert b"tok-secret-card" not in raw and b"Personne" not in raw
    assert set(made.record()) == {
        "notification_id",
        "account_id",
        "kind",
        "amount_minor",
        "currency",
        "reward_kind",
        "offer_id",
        "merchant_id",
        "occurred_at",
        "language",
        "line",
        "expires_at",
    }
