"""Holdout groups (stream.core.holdout): membership is a keyed hash of account and offer, stable,
monotone in the share and about the share in size; a held-out account earns nothing from the
offer (reason ``holdout``, the line naming the offer), earns what it would without the offer, and
uses none of its budget or cap. Offers without a holdout never compute the hash."""

from __future__ import annotations

import hashlib
import io
import json
import math
import struct
from dataclasses import replace
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codec import SCHEMA_DIR, Codec
from stream.core import eligibility
from stream.core.holdout import BUCKETS, MAX_HOLDOUT_BPS, bucket, held_out
from stream.core.offer_parsing import parse_offer
from stream.core.offers import OfferBook, OfferError
from stream.core.outcomes import Outcome
from stream.core.rules import decide
from tests.factories import T0, auth, book, card_event, clearing, offer, profile

SEEDED = settings(max_examples=300, derandomize=True, database=None, deadline=None)
ACCOUNT = "acct-1"  # the factories' account
HELD = "g1"  # acct-1's bucket for it: 4016, below the 5000 the tests give it
FREE = "grocery-5"  # acct-1's bucket for it: 6959
ids = st.text(min_size=1, max_size=40)


# --- membership ---------------------------------------------------------------------------------


def test_buckets_never_change() -> None:
    # A new hash would move accounts between the groups of every running campaign: pinned.
    assert bucket(ACCOUNT, HELD) == 4016 and bucket(ACCOUNT, FREE) == 6959
    assert bucket("conformance-35-holdout", "grocer-8") == 1247
    assert bucket("acct-000001", "grocery-5") == bucket("acct-000001", "grocery-5")


def test_the_two_ids_are_framed_not_concatenated() -> None:
    assert bucket("ab", "c") != bucket("a", "bc")


@SEEDED
@given(account=ids, offer_id=ids)
def test_the_bucket_is_the_documented_keyed_hash(account: str, offer_id: str) -> None:
    framed = b"".join(len(x.encode()).to_bytes(4, "big") + x.encode() for x in (account, offer_id))
    digest = hashlib.blake2b(framed, digest_size=8, person=b"cashback-holdout").digest()
    assert bucket(account, offer_id) == int.from_bytes(digest, "big") % BUCKETS
    assert 0 <= bucket(account, offer_id) < BUCKETS


@SEEDED
@given(account=ids, offer_id=ids, shares=st.lists(st.integers(0, MAX_HOLDOUT_BPS), min_size=2, max_size=6))
def test_raising_the_share_only_adds_accounts(account: str, offer_id: str, shares: list[int]) -> None:
    base = replace(offer(), offer_id=offer_id)  # any id the hash may see
    members = [held_out(account, replace(base, holdout_bps=bps)) for bps in sorted(shares)]
    assert members == sorted(members)  # False ... False True ... True: once in, in for every larger share
    assert not held_out(account, replace(base, holdout_bps=0))


@SEEDED
@given(account=ids, bps=st.integers(1, MAX_HOLDOUT_BPS))
def test_membership_depends_on_the_ids_only(account: str, bps: int) -> None:
    plain = offer(offer_id=FREE, holdout_bps=bps)
    other_terms = offer(offer_id=FREE, holdout_bps=bps, rate_bps=900, mccs=[], currency="EUR", version=7)
    priced = offer(offer_id=FREE, holdout_bps=bps, currency="EUR", prices={"JPY": {}}).priced("JPY")
    assert priced is not None
    assert held_out(account, plain) == held_out(account, other_terms) == held_out(account, priced)


@pytest.mark.parametrize("bps", [100, 1_000, 2_500, 5_000])
def test_about_the_share_of_accounts_is_held_out(bps: int) -> None:
    n = 20_000
    rule = offer(holdout_bps=bps)
    count = sum(held_out(f"acct-{i:06d}", rule) for i in range(n))
    p = bps / BUCKETS
    assert abs(count - n * p) < 5 * math.sqrt(n * p * (1 - p)), count  # 5 sigma: a fair share, never by luck


def test_the_groups_of_two_offers_are_independent() -> None:
    n = 20_000
    first, second = offer(offer_id="a", holdout_bps=5_000), offer(offer_id="b", holdout_bps=5_000)
    both = sum(held_out(f"acct-{i:06d}", first) and held_out(f"acct-{i:06d}", second) for i in range(n))
    assert abs(both - n / 4) < 5 * math.sqrt(n * 0.25 * 0.75), both  # not the same accounts every time


# --- the field ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [-1, 5_001, 10_000, "10%", 12.5, True, [1000]])
def test_a_bad_share_is_refused_naming_the_field(value: Any) -> None:
    with pytest.raises(OfferError) as caught:
        parse_offer({"offer_id": "grocery-5", "rate_bps": 500, "holdout_bps": value})
    assert caught.value.field_name == "holdout_bps" and caught.value.offer_id == "grocery-5"


def test_the_share_defaults_to_none_and_round_trips_through_the_codec() -> None:
    assert offer().holdout_bps == 0 and offer(holdout_bps=None).holdout_bps == 0
    original = offer(holdout_bps=MAX_HOLDOUT_BPS)
    data = Codec().encode("offer", original.to_record())
    assert data[1:5] == (20).to_bytes(4, "big")  # offer.v6.avsc (v4 added holdout_bps)
    assert parse_offer(Codec().decode(data, expected_subject="offer")[1]) == original


def test_version_3_bytes_decode_into_an_offer_holding_no_one_out() -> None:
    original = offer(currency="EUR", prices={"JPY": {}})
    record = {k: v for k, v in original.to_record().items() if k != "holdout_bps"}
    schema = fastavro.parse_schema(json.loads((SCHEMA_DIR / "offer.v3.avsc").read_text()))
    buffer = io.BytesIO()
    buffer.write(struct.pack(">bI", 0, 11))
    fastavro.schemaless_writer(buffer, schema, record)
    _, decoded = Codec().decode(buffer.getvalue(), expected_subject="offer")
    assert decoded["holdout_bps"] == 0 and parse_offer(decoded) == original


# --- the engine ---------------------------------------------------------------------------------


def _lines(decision: Any) -> list[tuple[str, str | None, int, str]]:
    return [
        (e.entry_kind, e.offer_id, e.amount_minor, e.explanation.reason)
        for e in decision.entries
        if e.entry_kind != "RECONCILIATION"
    ]


def test_a_held_out_account_earns_nothing_with_the_reason_holdout() -> None:
    offers = book(offer(offer_id=HELD, holdout_bps=5_000, version=3))
    decision = decide(auth(), offers, None)
    assert decision.outcome is Outcome.HOLDOUT and decision.outcome.value == "holdout"  # the metric's outcome label
    (line,) = decision.entries
    assert (line.entry_kind, line.offer_id, line.rule_version, line.amount_minor) == ("NOT_EARNED", HELD, 3, 0)
    assert line.explanation.reason == "holdout" and line.explanation.rate_bps == 500  # what it would have paid
    assert f"from {HELD}: holdout" in line.explanation.detail and "bucket 4016 < holdout_bps 5000" in line.explanation.detail
    assert decision.budget_deltas == {}
    cleared = decide(clearing(), offers, decision.state)
    assert cleared.outcome is Outcome.HOLDOUT
    assert [e.explanation.reason for e in cleared.entries if e.entry_kind == "NOT_EARNED"] == ["holdout"]
    assert not [e for e in cleared.entries if e.entry_kind not in ("NOT_EARNED", "RECONCILIATION")]


def test_below_the_share_the_account_earns_as_usual() -> None:
    held = decide(auth(), book(offer(offer_id=FREE, holdout_bps=5_000)), None)
    plain = decide(auth(), book(offer(offer_id=FREE)), None)
    assert held.outcome is plain.outcome is Outcome.EARNED
    assert _lines(held) == _lines(plain) == [("PENDING_CREATED", FREE, 500, "earned")]


def test_a_held_out_offer_never_wins_the_stacking_and_pays_nothing() -> None:
    offers = book(
        offer(offer_id=HELD, rate_bps=800, holdout_bps=5_000),
        offer(offer_id="everyday-1", rate_bps=100, mccs=[]),
        offer(offer_id="give-1", rate_bps=50, mccs=[], stackable=True, reward_kind="CHARITY", charity_id="red-cross"),
    )
    decision = decide(auth(), offers, None)
    assert decision.outcome is Outcome.EARNED
    assert _lines(decision) == [
        ("NOT_EARNED", HELD, 0, "holdout"),  # the record says which offer held the account out
        ("PENDING_CREATED", "everyday-1", 100, "earned"),  # what the world without the offer pays
        ("PENDING_CREATED", "give-1", 50, "earned"),
    ]
    without = decide(auth(event_id="x-1"), OfferBook.of(o for o in offers.offers if o.offer_id != HELD), None)
    assert _lines(decision)[1:] == _lines(without)


def test_a_held_out_offer_uses_none_of_its_budget_nor_its_cap() -> None:
    held = offer(
        offer_id=HELD, holdout_bps=5_000, currency="EUR", budget_minor=1_000, cap={"period": "month", "amount_minor": 500}
    )
    paying = offer(offer_id="everyday-1", rate_bps=100, mccs=[], currency="EUR", budget_minor=1_000)
    offers = book(held, paying)
    state, used = None, {}
    for event in (auth(), clearing(), auth(20_000, transaction_ref="txn-2"), clearing(20_000, transaction_ref="txn-2")):
        decision = decide(event, offers, state, budget_remaining={k: 1_000 - v for k, v in used.items()})
        state = decision.state
        for key, delta in decision.budget_deltas.items():
            used[key] = used.get(key, 0) + delta
    assert used == {"everyday-1": 300}
    assert HELD not in state.caps


def test_activating_does_not_take_the_account_out_of_the_group() -> None:
    offers = book(offer(offer_id=HELD, holdout_bps=5_000, requires_activation=True))
    activated = profile(**{HELD: T0})
    assert decide(auth(occurred_at=T0.replace(minute=30)), offers, None, activated).outcome is Outcome.HOLDOUT
    before = T0.replace(hour=9)
    assert decide(auth(occurred_at=before), offers, None, activated).outcome is Outcome.NOT_ACTIVATED
    assert decide(auth(occurred_at=T0.replace(minute=30)), offers, None).outcome is Outcome.NOT_ACTIVATED


def test_a_held_out_purchase_still_earns_under_an_offer_it_was_only_short_of() -> None:
    offers = book(
        offer(offer_id=HELD, holdout_bps=5_000),
        offer(offer_id="everyday-1", rate_bps=100, mccs=[], min_spend_minor=20_000),
    )
    first = decide(auth(10_000), offers, None)
    assert first.outcome is Outcome.HOLDOUT
    more = decide(card_event("INCREMENTAL_AUTHORIZATION", 15_000), offers, first.state)
    assert more.outcome is Outcome.EARNED
    assert _lines(more) == [("PENDING_CREATED", "everyday-1", 250, "earned")]  # 1% of 250.00, never the held-out 5%


def test_a_reconsidered_purchase_never_earns_from_an_offer_that_now_holds_the_account_out() -> None:
    near = offer(offer_id=HELD, holdout_bps=4_000, min_spend_minor=20_000)  # bucket 4016: not held out
    first = decide(auth(10_000), book(near), None)
    assert first.outcome is Outcome.BELOW_MIN_SPEND
    raised = book(replace(near, holdout_bps=4_100))  # the share raised: now held out
    cleared = decide(clearing(25_000), raised, first.state)
    assert cleared.outcome is Outcome.BELOW_MIN_SPEND
    assert not [e for e in cleared.entries if e.entry_kind not in ("NOT_EARNED", "RECONCILIATION")]
    assert decide(clearing(25_000), book(near), first.state).outcome is Outcome.CONFIRMED  # the control


def test_a_held_out_offer_short_of_its_minimum_is_no_holdout_line() -> None:
    offers = book(offer(offer_id=HELD, holdout_bps=5_000, min_spend_minor=20_000))
    decision = decide(auth(10_000), offers, None)
    assert decision.outcome is Outcome.BELOW_MIN_SPEND  # it would not have paid: nothing to measure
    (txn,) = decision.state.txns.values()
    assert txn.refused is not None and txn.refused.near == ()  # never reconsidered under it


def test_a_force_post_is_held_out_too_and_a_redelivery_changes_nothing() -> None:
    offers = book(offer(offer_id=HELD, holdout_bps=5_000))
    event = clearing()
    first = decide(event, offers, None)
    assert first.outcome is Outcome.HOLDOUT
    again = decide(event, offers, first.state)
    assert again.outcome is Outcome.DUPLICATE and again.entries == first.entries


def test_offers_without_a_holdout_never_compute_the_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: Any) -> bool:
        raise AssertionError("hashed for a book without holdout")

    monkeypatch.setattr(eligibility, "held_out", refuse)
    offers = book(offer(), offer(offer_id="everyday-1", rate_bps=100, mccs=[]))
    assert not offers.holdouts and book(offer(holdout_bps=1)).holdouts
    assert decide(auth(), offers, None).outcome is Outcome.EARNED


def _money(decision: Any) -> list[tuple[str, str | None, str, str, int]]:
    return [
        (e.entry_kind, e.offer_id, e.debit_book, e.credit_book, e.amount_minor)
        for e in decision.entries
        if e.entry_kind not in ("NOT_EARNED", "RECONCILIATION")
    ]


@SEEDED
@given(
    number=st.integers(0, 10**7),
    bps=st.integers(0, MAX_HOLDOUT_BPS),
    amount=st.integers(1, 50_000),
    kind=st.sampled_from(["AUTHORIZATION", "CLEARING"]),
)
def test_a_held_out_account_is_paid_as_if_the_offer_did_not_exist(number: int, bps: int, amount: int, kind: str) -> None:
    account = f"acct-{number:07d}"
    measured = offer(offer_id="g8", rate_bps=800, holdout_bps=bps, min_spend_minor=1_000, currency="EUR", budget_minor=10_000)
    others = (
        offer(offer_id="everyday-1", rate_bps=100, mccs=[], min_spend_minor=2_000),
        offer(offer_id="give-1", rate_bps=50, mccs=[], stackable=True, reward_kind="CHARITY", charity_id="red-cross"),
    )
    event = card_event(kind, amount, account_id=account)
    decision = decide(event, book(measured, *others), None)
    holdout_lines = [e for e in decision.entries if e.explanation.reason == "holdout"]
    if held_out(account, measured):
        without = decide(event, book(*others), None)
        assert _money(decision) == _money(without) and decision.budget_deltas == without.budget_deltas
        assert [e.offer_id for e in holdout_lines] == (["g8"] if amount >= 1_000 else [])
        assert decision.outcome in (without.outcome, Outcome.HOLDOUT)
    else:  # exactly what the offer without a holdout decides
        plain = decide(event, book(replace(measured, holdout_bps=0), *others), None)
        assert decision.entries == plain.entries and decision.outcome is plain.outcome and not holdout_lines
