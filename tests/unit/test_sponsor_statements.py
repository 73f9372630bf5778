"""Who pays (issue 12, part 6), the pure parts: an offer's funding (offer v6), the sponsor every entry of its reward
carries (accrual v6), the sink's fingerprint across the upgrade, and a statement's month and arithmetic
(``stream.store.sponsor_statements``; the queries run on the real stack in tests/integration/test_sponsor_statements.py)."""

from __future__ import annotations

import argparse
import io
import json
import struct
from datetime import UTC, datetime
from typing import Any

import fastavro
import pytest

from schemas.codec import SCHEMA_DIR, Codec
from stream.cli import _month, _sponsor
from stream.core.offer_parsing import UNATTRIBUTED_SPONSOR, parse_offer, parse_published_offer
from stream.core.offer_terms import OfferError
from stream.core.offers import OfferBook
from stream.sink import appending_ids, sponsoring_ids, staging_row
from stream.statements import render
from stream.store.sponsor_statements import MonthError, assemble, is_sponsor_id, month_bounds
from tests.factories import after_purchase, auth, book, clearing, offer, run_events

CODEC = Codec()
MERCHANT = {"sponsor": "MERCHANT", "sponsor_id": "grocer-co"}


# --- the offer's funding ---------------------------------------------------------------------------


def test_an_offer_is_bank_funded_by_default() -> None:
    plain = offer()
    assert (plain.sponsor, plain.sponsor_id) == ("BANK", None)
    assert offer(**MERCHANT).sponsor_id == "grocer-co"


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"sponsor": "MERCHANT"}, "required when sponsor is MERCHANT"),
        ({"sponsor": "MERCHANT", "sponsor_id": ""}, "is not 1 to 64"),
        ({"sponsor": "MERCHANT", "sponsor_id": "grocer co"}, "is not 1 to 64"),
        ({"sponsor": "MERCHANT", "sponsor_id": "x" * 65}, "is not 1 to 64"),
        ({"sponsor": "MERCHANT", "sponsor_id": 42}, "is not 1 to 64"),
        ({"sponsor": "MERCHANT", "sponsor_id": "Bank"}, "reserved for the bank"),
        ({"sponsor": "MERCHANT", "sponsor_id": "unattributed"}, "reserved for merchant offers published without"),
        ({"sponsor_id": "grocer-co"}, "only for sponsor MERCHANT"),
        ({"sponsor": "BANK", "sponsor_id": "grocer-co"}, "only for sponsor MERCHANT"),
    ],
)
def test_bad_funding_is_refused_naming_the_field(overrides: dict[str, Any], words: str) -> None:
    with pytest.raises(OfferError) as caught:
        offer(**overrides)
    assert caught.value.field_name == "sponsor_id" and caught.value.offer_id == "grocery-5"
    assert words in str(caught.value)


def test_offer_v6_round_trips_and_v5_bytes_read_as_bank_funded() -> None:
    funded = offer(**MERCHANT)
    raw = CODEC.encode("offer", funded.to_record())
    assert int.from_bytes(raw[1:5], "big") == json.loads((SCHEMA_DIR / "ids.json").read_text())["offer.v6.avsc"]
    assert parse_offer(CODEC.decode(raw, expected_subject="offer")[1]) == funded
    plain = offer()
    v5 = fastavro.parse_schema(json.loads((SCHEMA_DIR / "offer.v5.avsc").read_text()))
    buffer = io.BytesIO()
    buffer.write(struct.pack(">bI", 0, 19))
    fastavro.schemaless_writer(buffer, v5, {k: v for k, v in plain.to_record().items() if k != "sponsor_id"})
    assert parse_offer(CODEC.decode(buffer.getvalue(), expected_subject="offer")[1]) == plain


def _offer_v5_bytes(record: dict[str, Any]) -> bytes:
    v5 = fastavro.parse_schema(json.loads((SCHEMA_DIR / "offer.v5.avsc").read_text()))
    buffer = io.BytesIO()
    buffer.write(struct.pack(">bI", 0, json.loads((SCHEMA_DIR / "ids.json").read_text())["offer.v5.avsc"]))
    fastavro.schemaless_writer(buffer, v5, {k: v for k, v in record.items() if k != "sponsor_id"})
    return buffer.getvalue()


def test_a_merchant_offer_published_before_v6_stays_live_billed_to_unattributed() -> None:
    # Upgrading the workers must not stop customers earning an offer already promised to them: a
    # MERCHANT offer read back in v5 bytes (no sponsor_id could be written) is kept, booked to the
    # reserved sponsor until republished; typed in by hand, the same offer is refused.
    record = offer(**MERCHANT).to_record()
    record = record | {"sponsor_id": None}
    read_back = parse_published_offer(CODEC.decode(_offer_v5_bytes(record), expected_subject="offer")[1])
    assert (read_back.sponsor, read_back.sponsor_id) == ("MERCHANT", UNATTRIBUTED_SPONSOR)
    with pytest.raises(OfferError, match="required when sponsor is MERCHANT"):
        parse_offer(record)
    _, (entry, *_), _ = run_events([auth()], book(read_back))
    assert (
        entry.entry_kind == "PENDING_CREATED" and entry.sponsor_id == UNATTRIBUTED_SPONSOR and is_sponsor_id(UNATTRIBUTED_SPONSOR)
    )
    # republished in v6 with its sponsor, the mirror's parse gives it back as is
    republished = offer(**MERCHANT)
    assert parse_published_offer(CODEC.decode(CODEC.encode("offer", republished.to_record()), "offer")[1]) == republished


def test_accrual_v6_appends_only_sponsor_id_with_a_null_default() -> None:
    v5 = json.loads((SCHEMA_DIR / "accrual.v5.avsc").read_text())
    v6 = json.loads((SCHEMA_DIR / "accrual.v6.avsc").read_text())
    assert v6["fields"][: len(v5["fields"])] == v5["fields"]
    (added,) = v6["fields"][len(v5["fields"]) :]
    assert (added["name"], added["type"], added["default"]) == ("sponsor_id", ["null", "string"], None)


# --- the entries carry it ----------------------------------------------------------------------------


def test_every_entry_of_a_merchant_funded_reward_names_its_sponsor() -> None:
    grocer = offer(**MERCHANT)
    _, entries, _ = run_events([auth(), clearing(8_000), after_purchase("REFUND", 4_000)], book(grocer))
    assert [e.entry_kind for e in entries] == ["PENDING_CREATED", "CONFIRMED", "PENDING_RELEASED", "CLAWED_BACK"]
    assert {e.sponsor_id for e in entries} == {"grocer-co"}
    assert all(e.record()["sponsor_id"] == "grocer-co" for e in entries)


def test_a_clawback_carries_the_sponsor_of_the_reward_it_takes_back_not_the_offer_s_sponsor_now() -> None:
    state, first, _ = run_events([auth(), clearing()], book(offer(**MERCHANT)))
    republished = offer(version=2, sponsor="MERCHANT", sponsor_id="another-co")
    _, later, _ = run_events([after_purchase("CHARGEBACK", 10_000)], book(republished), state)
    (clawback,) = [e for e in later if e.entry_kind == "CLAWED_BACK"]
    assert first[0].sponsor_id == clawback.sponsor_id == "grocer-co"


def test_a_bank_funded_entry_has_no_sponsor() -> None:
    _, entries, _ = run_events([auth(), clearing()])
    assert entries and all(e.sponsor_id is None for e in entries)


# --- the sink's fingerprint ------------------------------------------------------------------------------


def _v5_bytes(record: dict[str, Any]) -> bytes:
    v5 = fastavro.parse_schema(json.loads((SCHEMA_DIR / "accrual.v5.avsc").read_text()))
    buffer = io.BytesIO()
    buffer.write(struct.pack(">bI", 0, json.loads((SCHEMA_DIR / "ids.json").read_text())["accrual.v5.avsc"]))
    fastavro.schemaless_writer(buffer, v5, {k: v for k, v in record.items() if k != "sponsor_id"})
    return buffer.getvalue()


def _fingerprint(raw: bytes) -> str:
    row = staging_row(0, CODEC.decode(raw)[1], raw, appending_ids(CODEC), sponsoring_ids(CODEC))
    return str(row[15])


def test_a_bank_funded_entry_sent_before_the_upgrade_and_again_after_it_has_one_fingerprint() -> None:
    _, entries, _ = run_events([auth(), clearing()])
    for entry in entries:
        for record in (entry.record(), {**entry.record(), "merchant_id": None, "purchase_ref": None}):
            old, new = _v5_bytes(record), CODEC.encode("accrual", record)
            assert new[5:] == old[5:] + b"\x00"
            assert _fingerprint(old) == _fingerprint(new)


def test_the_sponsor_is_part_of_the_fingerprint_and_the_row() -> None:
    _, (entry, *_), _ = run_events([auth(), clearing()], book(offer(**MERCHANT)))
    raw = CODEC.encode("accrual", entry.record())
    row = staging_row(0, CODEC.decode(raw)[1], raw, appending_ids(CODEC), sponsoring_ids(CODEC))
    assert row[-1] == "grocer-co"
    other = CODEC.encode("accrual", {**entry.record(), "sponsor_id": "another-co"})
    assert _fingerprint(raw) != _fingerprint(other)
    # with a sponsor set, version 3's two nulls are not trailing: nothing is cut, so the sponsor still counts
    bare = {**entry.record(), "merchant_id": None, "purchase_ref": None}
    assert _fingerprint(CODEC.encode("accrual", bare)) != _fingerprint(CODEC.encode("accrual", {**bare, "sponsor_id": None}))


# --- the statement -----------------------------------------------------------------------------------------


def test_a_month_is_its_utc_calendar_bounds() -> None:
    assert month_bounds("2026-12") == (datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    assert month_bounds("2027-02") == (datetime(2027, 2, 1, tzinfo=UTC), datetime(2027, 3, 1, tzinfo=UTC))


@pytest.mark.parametrize("month", ["2026-13", "2026-00", "2026-1", "26-12", "2026/12", "2026-12-01", "", "0000-01", "9999-12"])
def test_a_bad_month_is_refused_saying_what_is_expected(month: str) -> None:
    with pytest.raises(MonthError, match="YYYY-MM"):
        month_bounds(month)
    with pytest.raises(argparse.ArgumentTypeError, match="YYYY-MM"):
        _month(month)


def test_sponsor_ids_are_bank_or_an_offer_s_sponsor_id() -> None:
    assert is_sponsor_id("bank") and is_sponsor_id("grocer-co") and is_sponsor_id("fnac")
    assert not is_sponsor_id("Bank") and not is_sponsor_id("a b") and not is_sponsor_id("-x") and not is_sponsor_id("")
    assert _sponsor("fnac") == "fnac"
    with pytest.raises(argparse.ArgumentTypeError, match="not bank nor a sponsor id"):
        _sponsor("grocer co")


def _cost(
    offer_id: str, booked: int, returned: int, pending: int, clawed: int, unit: str = "EUR", kind: str = "CASH"
) -> dict[str, Any]:
    return {
        "offer_id": offer_id,
        "reward_kind": kind,
        "unit": unit,
        "booked": booked,
        "returned": returned,
        "pending": pending,
        "clawed_back": clawed,
        "entries": 3,
    }


def test_a_statement_adds_its_offers_up_per_kind_and_unit_never_across_units() -> None:
    costs = [
        _cost("grocer-5", 500, 300, 0, 200),  # 5.00 booked, 1.00 released + 2.00 clawed back
        _cost("grocer-8", 800, 0, 800, 0),  # still pending at the month's end
        _cost("grocer-jpy", 100, 0, 0, 0, unit="JPY"),
        _cost("grocer-points", 200, 0, 0, 0, unit="PTS", kind="POINTS"),
    ]
    purchases = [
        {"offer_id": "grocer-5", "reward_kind": "CASH", "unit": "EUR", "level": 0, "purchases": 1},
        {"offer_id": "grocer-8", "reward_kind": "CASH", "unit": "EUR", "level": 0, "purchases": 1},
        {"offer_id": None, "reward_kind": "CASH", "unit": "EUR", "level": 1, "purchases": 1},  # the same purchase, stacked
        {"offer_id": "grocer-jpy", "reward_kind": "CASH", "unit": "JPY", "level": 0, "purchases": 2},
        {"offer_id": None, "reward_kind": "CASH", "unit": "JPY", "level": 1, "purchases": 2},
    ]
    statement = assemble("grocer-co", "2026-12", costs, purchases)
    eur, jpy, points = statement.lines
    assert (eur.reward_kind, eur.unit, jpy.unit, points.unit) == ("CASH", "EUR", "JPY", "PTS")
    assert (eur.booked_minor, eur.returned_minor, eur.net_minor, eur.pending_minor, eur.owed_minor) == (1300, 300, 1000, 800, 200)
    assert (eur.clawed_back_minor, eur.purchases, eur.entries) == (200, 1, 6)
    assert (jpy.owed_minor, jpy.purchases, points.owed_minor, points.purchases) == (100, 2, 200, 0)
    assert statement.offer_ids == ["grocer-5", "grocer-8", "grocer-jpy", "grocer-points"]
    (grocer5,) = statement.offers["grocer-5"]
    assert (grocer5.net_minor, grocer5.owed_minor, grocer5.purchases) == (200, 200, 1)
    for line in statement.lines:  # the offers' lines add up to the statement's
        parts = [
            f for lines in statement.offers.values() for f in lines if (f.reward_kind, f.unit) == (line.reward_kind, line.unit)
        ]
        assert sum(f.owed_minor for f in parts) == line.owed_minor
    text = render(statement)
    assert "merchant sponsor grocer-co for 2026-12" in text and "2.00 EUR" in text and "grocer-points" in text


def test_an_empty_month_has_no_lines() -> None:
    statement = assemble("bank", "2026-11", [], [])
    assert statement.lines == [] and statement.offers == {}
    assert "the bank's own budget" in render(statement) and "no lines" in render(statement)


def test_points_and_cash_of_one_sponsor_stay_apart() -> None:
    statement = assemble("grocer-co", "2026-12", [_cost("o", 1, 0, 0, 0, unit="PTS", kind="POINTS"), _cost("o", 1, 0, 0, 0)], [])
    assert [(f.reward_kind, f.unit) for f in statement.lines] == [("CASH", "EUR"), ("POINTS", "PTS")]


def test_the_example_offers_fund_some_rewards_by_merchants() -> None:
    from stream.composition import EXAMPLE_OFFERS
    from stream.offer_admin import load_offers_file

    offers = OfferBook.of(load_offers_file(EXAMPLE_OFFERS))
    funded = {o.offer_id: o.sponsor_id for o in offers.offers if o.sponsor_id}
    assert funded == {"fnac-online-8": "fnac", "coffee-fixed": "coffee-co"}
