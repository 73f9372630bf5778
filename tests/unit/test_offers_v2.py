"""Unit tests of the offer fields added in offer.v2: parsing, validation errors naming offer and
field, the Avro record (new bytes round-trip, version-1 bytes still decode with defaults)."""

from __future__ import annotations

import dataclasses
import io
import json
import struct
from pathlib import Path
from typing import Any

import fastavro
import pytest
import yaml

from schemas.codec import SCHEMA_DIR, Codec
from stream.core.offer_parsing import parse_offer
from stream.core.offers import Boost, Cap, CapPeriod, Hours, Offer, OfferError, RewardKind, Tier
from stream.offer_admin import load_offers_file
from tests.factories import offer

REPO_ROOT = Path(__file__).resolve().parents[2]


def raw(**overrides: Any) -> dict[str, Any]:
    mapping = {"offer_id": "weekend-5", "name": "5% at weekends", "rate_bps": 500, "mccs": ["5411"], **overrides}
    return {k: v for k, v in mapping.items() if v is not None}


def error_of(mapping: dict[str, Any]) -> OfferError:
    with pytest.raises(OfferError) as caught:
        parse_offer(mapping)
    return caught.value


FULL_V2 = {
    "segments": ["vip", "new"],
    "tiers": [{"segment": "vip", "rate_bps": 800}, {"segment": "gold", "rate_bps": 600}],
    "requires_activation": True,
    "days_of_week": ["sat", "SUN"],
    "hours": {"from": "18:00", "to": "23:30"},
    "boost": {"threshold_minor": 20_000, "rate_bps": 1_000},
    "cap": {"period": "month", "amount_minor": 2_000},
    "budget_minor": 1_000_000,
    "currency": "EUR",
}


def test_new_fields_default_to_an_unrestricted_rate_offer() -> None:
    parsed = parse_offer({"offer_id": "o-1", "rate_bps": 500})
    assert parsed.segments == frozenset() and parsed.tiers == () and parsed.requires_activation is False
    assert parsed.days_of_week == frozenset() and parsed.hours is None
    assert (parsed.fixed_reward_minor, parsed.points_per_unit, parsed.boost, parsed.cap, parsed.budget_minor) == (None,) * 5


def test_every_new_field_is_parsed() -> None:
    parsed = parse_offer(raw(**FULL_V2))
    assert parsed.segments == frozenset({"vip", "new"})
    assert parsed.tiers == (Tier("vip", 800), Tier("gold", 600))
    assert parsed.requires_activation is True
    assert parsed.days_of_week == frozenset({"SAT", "SUN"})
    assert parsed.hours == Hours(18 * 60, 23 * 60 + 30)
    assert parsed.boost == Boost(20_000, 1_000)
    assert parsed.cap == Cap(CapPeriod.MONTH, 2_000)
    assert parsed.budget_minor == 1_000_000


def test_fixed_and_points_rewards() -> None:
    fixed = parse_offer(raw(rate_bps=None, fixed_reward_minor=200, currency="EUR"))
    assert (fixed.rate_bps, fixed.fixed_reward_minor) == (None, 200)
    points = parse_offer(
        raw(rate_bps=None, points_per_unit=2, reward_kind="POINTS", currency="EUR", cap={"period": "week", "amount_minor": 500})
    )
    assert points.points_per_unit == 2 and points.reward_kind is RewardKind.POINTS
    assert points.reward_unit("EUR") == "PTS"
    fixed_points = parse_offer(raw(rate_bps=None, fixed_reward_minor=50, reward_kind="POINTS"))  # 50 points a purchase
    assert fixed_points.reward_unit("EUR") == "PTS"


def test_hours_over_midnight_and_until_midnight() -> None:
    night = parse_offer(raw(hours={"from": "22:00", "to": "02:00"})).hours
    assert (
        night is not None and [m in night for m in (22 * 60, 23 * 60 + 59, 0, 119, 120, 21 * 60 + 59)] == [True] * 4 + [False] * 2
    )
    evening = parse_offer(raw(hours={"from": "18:00", "to": "24:00"})).hours
    assert evening is not None and 23 * 60 + 59 in evening and 0 not in evening
    assert evening.to_record() == {"from": "18:00", "to": "24:00"}


INVALID = [
    # how much: exactly one way
    ({"rate_bps": None}, "rate_bps"),
    ({"fixed_reward_minor": 200, "currency": "EUR"}, "fixed_reward_minor"),
    ({"points_per_unit": 2, "reward_kind": "POINTS", "currency": "EUR"}, "points_per_unit"),
    ({"rate_bps": None, "fixed_reward_minor": 2.5, "currency": "EUR"}, "fixed_reward_minor"),
    ({"rate_bps": None, "fixed_reward_minor": 0, "currency": "EUR"}, "fixed_reward_minor"),
    ({"rate_bps": None, "fixed_reward_minor": 200}, "currency"),
    ({"rate_bps": None, "points_per_unit": 2, "currency": "EUR"}, "points_per_unit"),
    ({"rate_bps": None, "points_per_unit": 1.5, "reward_kind": "POINTS", "currency": "EUR"}, "points_per_unit"),
    ({"rate_bps": None, "points_per_unit": 0, "reward_kind": "POINTS", "currency": "EUR"}, "points_per_unit"),
    ({"rate_bps": None, "points_per_unit": 10_001, "reward_kind": "POINTS", "currency": "EUR"}, "points_per_unit"),
    ({"rate_bps": None, "points_per_unit": 2, "reward_kind": "POINTS"}, "currency"),
    ({"rate_bps": None, "points_per_unit": 2, "reward_kind": "POINTS", "currency": "EUR", "rounding": "half_up"}, "rounding"),
    ({"reward_kind": "POINTS"}, "rate_bps"),
    # who
    ({"segments": "vip"}, "segments"),
    ({"segments": ["vip", ""]}, "segments"),
    ({"segments": [7]}, "segments"),
    ({"tiers": {"segment": "vip", "rate_bps": 300}}, "tiers"),
    ({"tiers": [{"segment": "vip"}]}, "tiers[0].rate_bps"),
    ({"tiers": [{"segment": "vip", "rate_bps": 2.5}]}, "tiers[0].rate_bps"),
    ({"tiers": [{"segment": "vip", "rate_bps": 10_001}]}, "tiers[0].rate_bps"),
    ({"tiers": [{"segment": "", "rate_bps": 300}]}, "tiers[0].segment"),
    ({"tiers": [{"segment": "vip", "rate_bps": 300}, {"segment": "vip", "rate_bps": 400}]}, "tiers[1].segment"),
    ({"tiers": [{"segment": "vip", "rate_bps": 300, "colour": "gold"}]}, "tiers[0].colour"),
    ({"tiers": [{"segment": "vip", "rate_bps": 300}], "rate_bps": None, "fixed_reward_minor": 1, "currency": "EUR"}, "tiers"),
    ({"requires_activation": "yes"}, "requires_activation"),
    # when
    ({"days_of_week": ["SATURDAY"]}, "days_of_week"),
    ({"days_of_week": "SAT"}, "days_of_week"),
    ({"hours": {"from": "18:00"}}, "hours.to"),
    ({"hours": {"from": 1080, "to": "23:00"}}, "hours.from"),  # what YAML 1.1 makes of an unquoted 18:00
    ({"hours": {"from": "18h00", "to": "23:00"}}, "hours.from"),
    ({"hours": {"from": "24:00", "to": "23:00"}}, "hours.from"),
    ({"hours": {"from": "18:00", "to": "24:01"}}, "hours.to"),
    ({"hours": {"from": "18:60", "to": "23:00"}}, "hours.from"),
    ({"hours": {"from": "18:00", "to": "18:00"}}, "hours.to"),
    ({"hours": {"from": "00:00", "to": "24:00"}}, "hours.to"),
    ({"hours": "evenings"}, "hours"),
    ({"hours": {"from": "18:00", "to": "23:00", "tz": "UTC"}}, "hours.tz"),
    # boost
    ({"boost": {"threshold_minor": 20_000}}, "boost.rate_bps"),
    ({"boost": {"threshold_minor": 200.0, "rate_bps": 1_000}}, "boost.threshold_minor"),
    ({"boost": {"threshold_minor": 0, "rate_bps": 1_000}}, "boost.threshold_minor"),
    ({"boost": {"threshold_minor": 20_000, "rate_bps": 500}}, "boost.rate_bps"),
    ({"boost": {"threshold_minor": 20_000, "rate_bps": 10_001}}, "boost.rate_bps"),
    (
        {"boost": {"threshold_minor": 20_000, "rate_bps": 1_000}, "rate_bps": None, "fixed_reward_minor": 1, "currency": "EUR"},
        "boost",
    ),
    # cap
    ({"cap": {"period": "fortnight", "amount_minor": 2_000}, "currency": "EUR"}, "cap.period"),
    ({"cap": {"period": "month", "amount_minor": 20.0}, "currency": "EUR"}, "cap.amount_minor"),
    ({"cap": {"period": "month", "amount_minor": 0}, "currency": "EUR"}, "cap.amount_minor"),
    ({"cap": {"amount_minor": 2_000}, "currency": "EUR"}, "cap.period"),
    ({"cap": {"period": "month", "amount_minor": 2_000}}, "currency"),
    ({"cap": 2_000, "currency": "EUR"}, "cap"),
    # budget
    ({"budget_minor": 100_000}, "currency"),
    ({"budget_minor": 1000.5, "currency": "EUR"}, "budget_minor"),
    ({"budget_minor": -1, "currency": "EUR"}, "budget_minor"),
    ({"budget_minor": "1000", "currency": "EUR"}, "budget_minor"),
]


@pytest.mark.parametrize(("overrides", "field_name"), INVALID, ids=[f"{f}-{i}" for i, (_, f) in enumerate(INVALID)])
def test_invalid_new_field_names_offer_and_field(overrides: dict[str, Any], field_name: str) -> None:
    mapping = {"offer_id": "weekend-5", "name": "5% at weekends", "rate_bps": 500, "mccs": ["5411"], **overrides}
    mapping = {k: v for k, v in mapping.items() if not (k == "rate_bps" and v is None)}
    error = error_of(mapping)
    assert (error.offer_id, error.field_name) == ("weekend-5", field_name)
    assert str(error).startswith(f"offer 'weekend-5', field '{field_name}': ")


def test_unquoted_yaml_time_is_rejected_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "offers.yaml"
    path.write_text('offers:\n  - {offer_id: evening, rate_bps: 100, hours: {from: 18:00, to: "23:00"}}\n')
    with pytest.raises(OfferError) as caught:
        load_offers_file(path)
    assert caught.value.field_name == "hours.from" and "quoted" in str(caught.value)


def test_example_file_has_no_float_and_uses_the_new_fields() -> None:
    path = REPO_ROOT / "deploy" / "offers" / "example.yaml"

    def numbers(node: Any) -> list[Any]:
        if isinstance(node, dict):
            return [n for value in node.values() for n in numbers(value)]
        if isinstance(node, list):
            return [n for value in node for n in numbers(value)]
        return [node] if isinstance(node, (int, float)) and not isinstance(node, bool) else []

    assert all(isinstance(n, int) for n in numbers(yaml.safe_load(path.read_text())))
    offers = {o.offer_id: o for o in load_offers_file(path)}
    used = {name for o in offers.values() for name in FULL_V2 if getattr(o, name)}
    assert used == set(FULL_V2)
    assert any(o.points_per_unit for o in offers.values()) and any(o.fixed_reward_minor for o in offers.values())
    assert {o.reward_kind for o in offers.values()} == set(RewardKind)


# --- Avro ----------------------------------------------------------------------------------------


V2_CASES = [
    FULL_V2,
    {"rate_bps": None, "fixed_reward_minor": 300, "currency": "EUR", "reward_kind": "STORE_CREDIT", "days_of_week": ["MON"]},
    {
        "rate_bps": None,
        "points_per_unit": 2,
        "reward_kind": "POINTS",
        "currency": "EUR",
        "cap": {"period": "campaign", "amount_minor": 5_000},
    },
    {
        "reward_kind": "CHARITY",
        "charity_id": "red-cross",
        "hours": {"from": "22:00", "to": "02:00"},
        "budget_minor": 0,
        "currency": "JPY",
    },
]


@pytest.mark.parametrize("overrides", V2_CASES)
def test_v2_offer_round_trips_through_the_codec(overrides: dict[str, Any]) -> None:
    original = offer(**overrides)
    codec = Codec()
    data = codec.encode("offer", original.to_record())
    assert data[1:5] == (20).to_bytes(4, "big")  # offer.v6.avsc
    subject, record = codec.decode(data, expected_subject="offer")
    assert subject == "offer"
    assert parse_offer(record) == original


def _v1_bytes(record: dict[str, Any]) -> bytes:
    """Bytes a producer still on offer.avsc (schema id 3) writes."""
    schema = fastavro.parse_schema(json.loads((SCHEMA_DIR / "offer.avsc").read_text()))
    buffer = io.BytesIO()
    buffer.write(struct.pack(">bI", 0, 3))
    fastavro.schemaless_writer(buffer, schema, record)
    return buffer.getvalue()


def test_version_1_bytes_decode_into_an_offer_with_the_new_defaults() -> None:
    v1_record = offer(max_reward_per_txn_minor=2_000, valid_from="2026-11-01").to_record()
    for name in (
        "segments",
        "tiers",
        "requires_activation",
        "days_of_week",
        "hours",
        "fixed_reward_minor",
        "points_per_unit",
        "boost",
        "cap",
        "budget_minor",
    ):
        del v1_record[name]
    subject, record = Codec().decode(_v1_bytes(v1_record), expected_subject="offer")
    assert subject == "offer"
    assert record["segments"] == [] and record["tiers"] == [] and record["cap"] is None and record["rate_bps"] == 500
    parsed = parse_offer(record)
    assert parsed == offer(max_reward_per_txn_minor=2_000, valid_from="2026-11-01")
    assert parsed.requires_activation is False and parsed.budget_minor is None


def test_each_offer_schema_is_the_previous_plus_fields_with_defaults() -> None:
    v1 = {f["name"]: f for f in json.loads((SCHEMA_DIR / "offer.avsc").read_text())["fields"]}
    v2 = {f["name"]: f for f in json.loads((SCHEMA_DIR / "offer.v2.avsc").read_text())["fields"]}
    v3 = {f["name"]: f for f in json.loads((SCHEMA_DIR / "offer.v3.avsc").read_text())["fields"]}
    v4 = {f["name"]: f for f in json.loads((SCHEMA_DIR / "offer.v4.avsc").read_text())["fields"]}
    v5 = {f["name"]: f for f in json.loads((SCHEMA_DIR / "offer.v5.avsc").read_text())["fields"]}
    v6 = {f["name"]: f for f in json.loads((SCHEMA_DIR / "offer.v6.avsc").read_text())["fields"]}
    assert list(v2)[: len(v1)] == list(v1) and list(v3)[: len(v2)] == list(v2) and list(v4)[: len(v3)] == list(v3)
    assert list(v5)[: len(v4)] == list(v4) and list(v6)[: len(v5)] == list(v5)
    assert all(v4[name] == v3[name] for name in v3) and all(v5[name] == v4[name] for name in v4)  # earlier fields unchanged
    assert all(v6[name] == v5[name] for name in v5)
    assert set(v6) - set(v1) == set(Offer.__slots__) - set(v1) - {"limits_key"}  # derived
    assert set(v3) - set(v2) == {"prices"}
    assert set(v4) - set(v3) == {"holdout_bps"}
    assert set(v5) - set(v4) == {"available_expiry_days", "expiry_notice_days"}
    assert set(v6) - set(v5) == {"sponsor_id"}
    assert all("default" in v6[name] for name in set(v6) - set(v1))
    assert v2["rate_bps"]["type"] == ["null", "int"]  # fixed and points offers have no rate
    ids = json.loads((SCHEMA_DIR / "ids.json").read_text())
    assert (ids["offer.avsc"], ids["offer.v2.avsc"], ids["offer.v3.avsc"], ids["offer.v4.avsc"]) == (3, 7, 11, 17)
    assert (ids["offer.v5.avsc"], ids["offer.v6.avsc"]) == (19, 20)


def _v2_bytes(record: dict[str, Any]) -> bytes:
    """Bytes a producer still on offer.v2.avsc (schema id 7) writes."""
    schema = fastavro.parse_schema(json.loads((SCHEMA_DIR / "offer.v2.avsc").read_text()))
    buffer = io.BytesIO()
    buffer.write(struct.pack(">bI", 0, 7))
    fastavro.schemaless_writer(buffer, schema, record)
    return buffer.getvalue()


def test_version_2_bytes_decode_into_an_offer_priced_in_its_currency_only() -> None:
    original = offer(currency="EUR", cap={"period": "month", "amount_minor": 1_000})
    v2_record = {k: v for k, v in original.to_record().items() if k != "prices"}
    _, record = Codec().decode(_v2_bytes(v2_record), expected_subject="offer")
    assert record["prices"] == {}
    assert parse_offer(record) == original


# --- priced in every currency ---------------------------------------------------------------------


PRICED = {
    "offer_id": "dining-5",
    "rate_bps": 500,
    "currency": "EUR",
    "min_spend_minor": 2_000,
    "max_reward_per_txn_minor": 800,
    "boost": {"threshold_minor": 10_000, "rate_bps": 700},
    "cap": {"period": "month", "amount_minor": 1_000},
    "budget_minor": 100_000,
    "prices": {
        "JPY": {
            "min_spend_minor": 3_000,
            "max_reward_per_txn_minor": 1_200,
            "boost_threshold_minor": 15_000,
            "cap_amount_minor": 1_500,
            "budget_minor": 150_000,
        }
    },
}


def test_a_priced_offer_gives_its_amounts_in_each_currency_and_none_where_unpriced() -> None:
    offer_ = parse_offer(PRICED)
    assert offer_.priced("EUR") is offer_
    yen = offer_.priced("JPY")
    assert yen is not None
    assert (yen.currency, yen.min_spend_minor, yen.max_reward_per_txn_minor, yen.boost, yen.cap, yen.budget_minor) == (
        "JPY",
        3_000,
        1_200,
        Boost(15_000, 700),
        Cap(CapPeriod.MONTH, 1_500),
        150_000,
    )
    assert yen.limits_key == "dining-5@JPY" and yen.rate_bps == 500
    assert offer_.priced("BHD") is None
    assert offer_.budget_lines() == [("dining-5", 100_000, "EUR"), ("dining-5@JPY", 150_000, "JPY")]
    # an offer without a currency keeps its first meaning: its amounts in any billing currency
    anywhere = parse_offer({"offer_id": "any-1", "rate_bps": 100, "min_spend_minor": 500})
    assert anywhere.priced("BHD") is anywhere


def test_every_budget_a_priced_offer_draws_from_is_one_of_its_budget_lines() -> None:
    for raw in (
        PRICED,
        {
            **PRICED,
            "budget_minor": None,
            "prices": {"JPY": {k: v for k, v in PRICED["prices"]["JPY"].items() if k != "budget_minor"}},
        },
    ):
        offer_ = parse_offer(raw)
        lines = {key for key, _, _ in offer_.budget_lines()}
        for currency in ("EUR", "JPY"):
            priced = offer_.priced(currency)
            assert priced is not None
            assert (priced.budget_minor is None) == (not lines)
            if priced.budget_minor is not None:
                assert (priced.limits_key or priced.offer_id) in lines
    # an offer stripped of its budget (as the chaos run does) keeps no budget in any currency
    stripped = dataclasses.replace(parse_offer(PRICED), budget_minor=None)
    priced = stripped.priced("JPY")
    assert priced is not None and priced.budget_minor is None and stripped.budget_lines() == []


def test_points_are_one_unit_everywhere_only_the_spending_is_priced() -> None:
    points = parse_offer(
        {
            "offer_id": "pts",
            "reward_kind": "POINTS",
            "points_per_unit": 2,
            "currency": "EUR",
            "budget_minor": 10_000,
            "cap": {"period": "day", "amount_minor": 300},
            "prices": {"JPY": {"points_per_unit": 1}},
        }
    )
    yen = points.priced("JPY")
    assert yen is not None and yen.points_per_unit == 1 and yen.cap == points.cap and yen.budget_minor == 10_000
    assert yen.limits_key is None  # caps and budget in points are shared by every currency
    assert points.budget_lines() == [("pts", 10_000, "PTS")]


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"currency": None, "budget_minor": None, "cap": None}, "currency", "required when prices is set"),
        ({"prices": {"JPY": {"min_spend_minor": 3_000}}}, "prices.JPY.max_reward_per_txn_minor", "required"),
        (
            {"prices": {"JPY": {k: v for k, v in PRICED["prices"]["JPY"].items() if k != "budget_minor"}}},
            "prices.JPY.budget_minor",
            "required",
        ),
        ({"prices": {"EUR": dict(PRICED["prices"]["JPY"])}}, "prices.EUR", "own currency"),
        ({"prices": {"XYZ": {}}}, "prices.XYZ", "not an ISO 4217 currency"),
        (
            {"prices": {"JPY": {**PRICED["prices"]["JPY"], "fixed_reward_minor": 5}}},
            "prices.JPY.fixed_reward_minor",
            "no such amount",
        ),
        ({"prices": {"JPY": {**PRICED["prices"]["JPY"], "fee": 5}}}, "prices.JPY.fee", "unknown field"),
        (
            {"prices": {"JPY": {**PRICED["prices"]["JPY"], "cap_amount_minor": 1.5}}},
            "prices.JPY.cap_amount_minor",
            "whole number",
        ),
        ({"prices": ["JPY"]}, "prices", "mapping"),
    ],
)
def test_a_price_gives_exactly_the_amounts_the_offer_uses(change: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(OfferError) as error:
        parse_offer({**PRICED, **change})
    assert error.value.field_name == field and message in str(error.value)


def test_a_priced_offer_round_trips_through_the_codec() -> None:
    original = parse_offer(PRICED)
    codec = Codec()
    _, record = codec.decode(codec.encode("offer", original.to_record()), expected_subject="offer")
    assert parse_offer(record) == original
