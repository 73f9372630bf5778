"""Unit tests of stream.core.offers: validation errors naming offer and field, MCC sets, YAML files, Avro records."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from schemas.codec import Codec
from stream.core.money import Rounding
from stream.core.offer_parsing import parse_offer
from stream.core.offers import AccrueOn, MccSet, Offer, OfferBook, OfferError, RewardKind
from stream.offer_admin import load_offers_file
from tests.factories import offer

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_FILE = REPO_ROOT / "deploy" / "offers" / "example.yaml"


def raw(**overrides: Any) -> dict[str, Any]:
    return {"offer_id": "grocery-5", "name": "5% at supermarkets", "rate_bps": 500, "mccs": ["5411"], **overrides}


def error_of(mapping: dict[str, Any]) -> OfferError:
    with pytest.raises(OfferError) as caught:
        parse_offer(mapping)
    return caught.value


# --- parse_offer ---------------------------------------------------------------------------------


def test_minimal_offer_gets_the_documented_defaults() -> None:
    parsed = parse_offer({"offer_id": "o-1", "rate_bps": 500})
    assert parsed == Offer(offer_id="o-1", version=1, name="o-1", rate_bps=500)
    assert parsed.sponsor == "BANK" and parsed.reward_kind is RewardKind.CASH
    assert parsed.mccs.empty and parsed.excluded_mccs.empty
    assert parsed.rounding is Rounding.DOWN and parsed.accrue_on is AccrueOn.AUTHORIZATION
    assert (parsed.min_spend_minor, parsed.max_reward_per_txn_minor) == (0, None)
    assert (parsed.pending_days, parsed.auth_expiry_days, parsed.stackable) == (30, 30, False)


def test_full_offer_is_parsed() -> None:
    parsed = parse_offer(
        raw(
            version=3,
            sponsor="merchant",
            sponsor_id="red-cross-shop",
            reward_kind="charity",
            charity_id="red-cross",
            mccs=["5411", "5811-5814"],
            excluded_mccs=["5499"],
            merchant_ids=["m-1", 42],
            channels=["online", "IN_STORE"],
            merchant_countries=["fr", "DE"],
            currency="EUR",
            valid_from="2026-12-01",
            valid_to="2027-01-01T00:00:00+01:00",
            rounding="HALF_EVEN",
            min_spend_minor=2_000,
            max_reward_per_txn_minor=2_000,
            pending_days=0,
            auth_expiry_days=7,
            accrue_on="clearing",
            stackable=True,
        )
    )
    assert parsed.version == 3 and parsed.sponsor == "MERCHANT"
    assert parsed.reward_kind is RewardKind.CHARITY and parsed.charity_id == "red-cross"
    assert parsed.mccs == MccSet(frozenset({"5411"}), ((5811, 5814),))
    assert parsed.merchant_ids == frozenset({"m-1", "42"})
    assert parsed.channels == frozenset({"ONLINE", "IN_STORE"})
    assert parsed.merchant_countries == frozenset({"FR", "DE"})
    assert parsed.valid_from == datetime(2026, 12, 1, tzinfo=UTC)
    assert parsed.valid_to == datetime(2026, 12, 31, 23, tzinfo=UTC)
    assert parsed.rounding is Rounding.HALF_EVEN and parsed.accrue_on is AccrueOn.CLEARING
    assert (parsed.min_spend_minor, parsed.max_reward_per_txn_minor, parsed.pending_days) == (2_000, 2_000, 0)
    assert parsed.auth_expiry_days == 7 and parsed.stackable is True


@pytest.mark.parametrize(
    ("overrides", "field_name"),
    [
        ({"rate_bps": None}, "rate_bps"),
        ({"rate_bps": 10_001}, "rate_bps"),
        ({"rate_bps": 5.5}, "rate_bps"),
        ({"rate_bps": "500"}, "rate_bps"),
        ({"rate_bps": True}, "rate_bps"),
        ({"rate_bps": -1}, "rate_bps"),
        ({"mccs": ["54A1"]}, "mccs"),
        ({"mccs": ["541"]}, "mccs"),
        ({"mccs": ["5814-5811"]}, "mccs"),
        ({"mccs": ["5811-581"]}, "mccs"),
        ({"excluded_mccs": ["60l1"]}, "excluded_mccs"),
        ({"channels": ["IN_STORE", "TELEPATHY"]}, "channels"),
        ({"colour": "green"}, "colour"),
        ({"currency": "EURO"}, "currency"),
        ({"currency": "eur"}, "currency"),
        ({"reward_kind": "CHARITY"}, "charity_id"),
        ({"reward_kind": "CHARITY", "charity_id": ""}, "charity_id"),
        ({"reward_kind": "VOUCHER"}, "reward_kind"),
        ({"valid_from": "2027-01-01", "valid_to": "2026-12-01"}, "valid_to"),
        ({"valid_from": "2027-01-01", "valid_to": "2027-01-01"}, "valid_to"),
        ({"valid_from": "next tuesday"}, "valid_from"),
        ({"sponsor": "CHARITY"}, "sponsor"),
        ({"rounding": "up"}, "rounding"),
        ({"accrue_on": "SETTLEMENT"}, "accrue_on"),
        ({"min_spend_minor": 19.99}, "min_spend_minor"),
        ({"max_reward_per_txn_minor": 2.5}, "max_reward_per_txn_minor"),
        ({"pending_days": -1}, "pending_days"),
        ({"version": 0}, "version"),
        ({"name": 5}, "name"),
    ],
)
def test_invalid_offer_names_offer_and_field(overrides: dict[str, Any], field_name: str) -> None:
    mapping = raw(**overrides)
    if overrides.get("rate_bps", 0) is None:
        del mapping["rate_bps"]
    error = error_of(mapping)
    assert (error.offer_id, error.field_name) == ("grocery-5", field_name)
    assert str(error).startswith(f"offer 'grocery-5', field '{field_name}': ")
    assert isinstance(error, ValueError)


@pytest.mark.parametrize("text", ["false", "no"])
def test_stackable_as_text_is_rejected(text: str) -> None:
    error = error_of(raw(stackable=text))
    assert error.field_name == "stackable"


def test_missing_rate_says_what_a_basis_point_is() -> None:
    mapping = raw()
    del mapping["rate_bps"]
    assert "required" in str(error_of(mapping))


def test_rate_of_exactly_100_percent_is_allowed() -> None:
    assert parse_offer(raw(rate_bps=10_000)).rate_bps == 10_000
    assert parse_offer(raw(rate_bps=0)).rate_bps == 0


@pytest.mark.parametrize("offer_id", [None, "", "   ", 7])
def test_offer_id_is_required(offer_id: Any) -> None:
    error = error_of(raw(offer_id=offer_id))
    assert error.field_name == "offer_id"


def test_offer_must_be_a_mapping() -> None:
    with pytest.raises(OfferError) as caught:
        parse_offer(["offer_id", "x"])  # type: ignore[arg-type]
    assert caught.value.field_name == "offer"


# --- MccSet --------------------------------------------------------------------------------------


def test_mcc_set_membership_with_codes_and_ranges() -> None:
    mccs = MccSet.parse(["5411", "5811-5814", " 5541 "], "o", "mccs")
    assert [m in mccs for m in ("5411", "5541", "5811", "5812", "5814")] == [True] * 5
    assert [m in mccs for m in ("5410", "5412", "5810", "5815", "0000", "9999")] == [False] * 6
    assert not mccs.empty
    assert mccs.items() == ["5411", "5541", "5811-5814"]


def test_single_code_range_and_leading_zeros() -> None:
    mccs = MccSet.parse(["0742-0780", "3000-3000"], "o", "mccs")
    assert "0742" in mccs and "0780" in mccs and "3000" in mccs
    assert "0741" not in mccs and "3001" not in mccs
    assert mccs.items() == ["0742-0780", "3000-3000"]


def test_empty_mcc_set_is_empty() -> None:
    assert MccSet().empty
    assert MccSet.parse([], "o", "mccs") == MccSet()


# --- files ---------------------------------------------------------------------------------------


def test_shipped_example_file_loads() -> None:
    offers = load_offers_file(EXAMPLE_FILE)
    by_id = {o.offer_id: o for o in offers}
    assert list(by_id) == [
        "grocery-5",
        "dining-3",
        "fuel-2",
        "everyday-1",
        "fnac-online-8",
        "weekend-dining-vip",
        "coffee-fixed",
        "transit-10",
        "books-points",
        "pharmacy-charity",
    ]
    assert by_id["grocery-5"].max_reward_per_txn_minor == 2_000
    assert "5813" in by_id["dining-3"].mccs and by_id["dining-3"].pending_days == 0
    assert by_id["everyday-1"].mccs.empty and by_id["everyday-1"].accrue_on is AccrueOn.CLEARING
    fnac = by_id["fnac-online-8"]
    assert fnac.sponsor == "MERCHANT" and fnac.channels == frozenset({"ONLINE"})
    assert fnac.valid_from == datetime(2026, 11, 1, tzinfo=UTC)
    assert fnac.valid_to == datetime(2027, 1, 1, tzinfo=UTC)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "offers.yaml"
    path.write_text(text)
    return path


def test_duplicate_offer_id_in_a_file(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "offers:\n  - {offer_id: a, rate_bps: 100}\n  - {offer_id: b, rate_bps: 100}\n  - {offer_id: a, rate_bps: 200}\n",
    )
    with pytest.raises(OfferError) as caught:
        load_offers_file(path)
    assert (caught.value.offer_id, caught.value.field_name) == ("a", "offer_id")


@pytest.mark.parametrize("text", ["", "- {offer_id: a, rate_bps: 1}\n", "offers: {offer_id: a}\n", "offer:\n  - {}\n"])
def test_top_level_must_be_an_offers_list(tmp_path: Path, text: str) -> None:
    with pytest.raises(OfferError) as caught:
        load_offers_file(_write(tmp_path, text))
    assert caught.value.field_name == "offers"


def test_invalid_offer_in_a_file_names_it(tmp_path: Path) -> None:
    path = _write(tmp_path, "offers:\n  - {offer_id: ok, rate_bps: 100}\n  - {offer_id: bad, rate_bps: 5.5}\n")
    with pytest.raises(OfferError) as caught:
        load_offers_file(path)
    assert (caught.value.offer_id, caught.value.field_name) == ("bad", "rate_bps")


def test_yaml_dates_are_utc_midnight(tmp_path: Path) -> None:
    path = _write(tmp_path, "offers:\n  - {offer_id: a, rate_bps: 100, valid_from: 2026-12-01, valid_to: 2026-12-24T18:30:00Z}\n")
    (parsed,) = load_offers_file(path)
    assert parsed.valid_from == datetime(2026, 12, 1, tzinfo=UTC)
    assert parsed.valid_to == datetime(2026, 12, 24, 18, 30, tzinfo=UTC)


# --- Avro record ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {
            "mccs": ["5411", "5811-5814"],
            "excluded_mccs": ["5499"],
            "channels": ["ONLINE"],
            "merchant_ids": ["m-2", "m-1"],
            "merchant_countries": ["FR"],
            "currency": "EUR",
            "valid_from": "2026-12-01",
            "valid_to": "2027-01-01T12:30:00+00:00",
            "rounding": "half_up",
            "min_spend_minor": 2_000,
            "max_reward_per_txn_minor": 2_000,
            "pending_days": 0,
            "auth_expiry_days": 5,
            "accrue_on": "CLEARING",
            "stackable": True,
            "version": 4,
            "sponsor": "MERCHANT",
            "sponsor_id": "grocer-co",
        },
        {"reward_kind": "CHARITY", "charity_id": "unicef"},
        {"reward_kind": "POINTS", "mccs": [], "rate_bps": None, "points_per_unit": 2, "currency": "EUR"},
    ],
)
def test_to_record_round_trips_through_the_codec(overrides: dict[str, Any]) -> None:
    original = offer(**overrides)
    codec = Codec()
    data = codec.encode("offer", original.to_record())
    subject, record = codec.decode(data, expected_subject="offer")
    assert subject == "offer"
    assert parse_offer(record) == original


def test_offer_book_is_sorted_and_looks_up_by_id() -> None:
    first, second = offer(offer_id="b"), offer(offer_id="a")
    offers = OfferBook.of([first, second])
    assert [o.offer_id for o in offers.offers] == ["a", "b"]
    assert offers.get("b") is first
    assert offers.get("missing") is None
