"""Redemptions in the engine (``stream.core.redemptions``): first earned first redeemed across lots,
refusals, the exact balance, redelivery, expiry after a partial redemption, a refund of what was
redeemed, the wallet property, and the REDEEM instruction (account_instruction v2) and accrual v8."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.codec import SCHEMA_DIR, Codec
from stream.core.balances import balances
from stream.core.events import CardEvent, to_event, validate
from stream.core.lifecycle import due_events
from stream.core.offer_parsing import parse_offer
from stream.core.offers import OfferBook
from stream.core.outcomes import Outcome
from stream.core.redemption_messages import redeem_instruction, request_tag
from stream.core.rules import decide
from stream.core.state import AccountState
from stream.core.state_rows import assemble, decode_summary, encode
from stream.core.state_writes import split
from tests.factories import T0, card_event, legs
from tests.unit.test_expiry import POINTS, tick
from tests.unit.test_rules_properties import SEEDED, wallet_of

CODEC = Codec()
DINING = {**POINTS, "offer_id": "dining-points", "mccs": ["5812"], "available_expiry_days": 60, "expiry_notice_days": None}
FOREVER = {**POINTS, "offer_id": "forever-points", "mccs": ["5999"], "available_expiry_days": None, "expiry_notice_days": None}
OFFERS = OfferBook.of([parse_offer(POINTS), parse_offer(DINING), parse_offer(FOREVER)])


def clearing(ref: str, at: datetime, amount: int = 10_000, mcc: str = "5411") -> CardEvent:
    """A purchase cleared at ``at``: 2 points per euro, AVAILABLE at once (pending_days 0)."""
    return card_event("CLEARING", amount, occurred_at=at, transaction_ref=ref, event_id=f"c-{ref}", mcc=mcc)


def redeem(key: str, amount: int, at: datetime, kind: str = "POINTS", unit: str = "PTS", reference: str = "") -> CardEvent:
    record = redeem_instruction("acct-1", key, kind, unit, amount, reference, "app-1", at)
    assert validate(record) is None
    return to_event(record)


class Account:
    def __init__(self) -> None:
        self.state: AccountState | None = None
        self.rows: dict[str, Any] = {}

    def feed(self, *events: CardEvent) -> Any:
        decision = None
        for event in events:
            decision = decide(event, OFFERS, self.state)
            self.state = decision.state
            for entry in decision.entries:
                assert self.rows.setdefault(entry.accrual_id, entry) == entry
        return decision

    def available(self) -> int:
        return balances(self.rows.values()).get(("acct-1", "POINTS", "PTS"), {}).get("available_minor", 0)


def test_a_redemption_takes_the_oldest_lots_first_across_offers_then_what_never_expires() -> None:
    account = Account()
    account.feed(
        clearing("t1", T0),  # 200 PTS, grocery, expires in 30 days
        clearing("t2", T0 + timedelta(days=1), mcc="5812"),  # 200 PTS, dining, 60 days
        clearing("t3", T0 + timedelta(days=2), mcc="5999"),  # 200 PTS, never expires
    )
    decision = account.feed(redeem("k1", 450, T0 + timedelta(days=3), reference="gift-card-25"))
    assert decision.outcome is Outcome.REDEEMED
    (entry,) = decision.entries
    assert legs([entry]) == [("REDEEMED", "AVAILABLE", "REDEEMED", 450)]
    assert entry.accrual_id == "r:acct-1:k1#0" and entry.transaction_ref == entry.purchase_ref == "r:acct-1:k1"
    assert (entry.reward_kind, entry.currency, entry.offer_id, entry.sponsor_id) == ("POINTS", "PTS", None, None)
    detail = entry.explanation.detail
    assert "200 PTS of grocery-points made available on 2026-12-01" in detail
    assert "200 PTS of dining-points made available on 2026-12-02" in detail and "50 PTS not expiring" in detail
    assert detail.endswith(request_tag("POINTS", 450, "PTS", "gift-card-25")) and "150 PTS left available" in detail
    assert account.state is not None and account.state.wallet == {"POINTS:PTS": 150}
    assert [(lot.offer_id, lot.amount, lot.redeemed) for lot in account.state.lots] == [
        ("grocery-points", 0, 200),
        ("dining-points", 0, 200),
    ]
    assert account.available() == 150


def test_a_redemption_above_the_balance_is_refused_and_moves_nothing() -> None:
    account = Account()
    account.feed(clearing("t1", T0))
    decision = account.feed(redeem("k1", 201, T0 + timedelta(hours=1)))
    assert decision.outcome is Outcome.REDEMPTION_REFUSED
    (line,) = decision.entries
    assert (line.entry_kind, line.debit_book, line.credit_book, line.amount_minor) == ("REDEMPTION_REFUSED", "NONE", "NONE", 0)
    assert line.explanation.reason == "insufficient_balance" and line.explanation.basis_minor == 201
    assert "200 PTS available" in line.explanation.detail
    assert account.state is not None and account.state.wallet == {"POINTS:PTS": 200} and account.state.lots[0].amount == 200
    exact = account.feed(redeem("k2", 200, T0 + timedelta(hours=2)))  # the exact balance: redeemed
    assert exact.outcome is Outcome.REDEEMED and account.state.wallet == {} and account.available() == 0
    assert account.feed(redeem("k3", 1, T0 + timedelta(hours=3))).outcome is Outcome.REDEMPTION_REFUSED


def test_store_credit_is_another_wallet_and_a_wallet_not_known_is_never_spent() -> None:
    account = Account()
    account.feed(clearing("t1", T0))
    refused = account.feed(redeem("k1", 1, T0 + timedelta(hours=1), "STORE_CREDIT", "EUR"))
    assert refused.outcome is Outcome.REDEMPTION_REFUSED and refused.entries[0].reward_kind == "STORE_CREDIT"
    assert account.state is not None
    account.state.wallet = None  # a state stored before wallets were kept
    unknown = account.feed(redeem("k2", 10, T0 + timedelta(hours=2)))
    assert unknown.outcome is Outcome.REDEMPTION_REFUSED and unknown.entries[0].explanation.reason == "wallet_unknown"


def test_a_redelivered_or_retried_redemption_is_decided_once_and_re_emits_its_entries() -> None:
    account = Account()
    account.feed(clearing("t1", T0))
    first = account.feed(redeem("k1", 150, T0 + timedelta(hours=1)))
    retried = account.feed(redeem("k1", 150, T0 + timedelta(hours=5)))  # the same request, sent again later
    assert retried.outcome is Outcome.DUPLICATE and retried.entries == first.entries
    assert account.state is not None and account.state.wallet == {"POINTS:PTS": 50}
    other = account.feed(redeem("k1", 20, T0 + timedelta(hours=6)))  # the same key, another request
    assert other.outcome is Outcome.DUPLICATE_CONFLICT and other.entries == ()
    assert account.state.wallet == {"POINTS:PTS": 50}


def test_an_expiry_after_a_partial_redemption_expires_only_what_is_left() -> None:
    account = Account()
    account.feed(clearing("t1", T0), clearing("t2", T0 + timedelta(days=1)))
    account.feed(redeem("k1", 250, T0 + timedelta(days=2)))
    assert account.state is not None
    assert [(lot.amount, lot.redeemed) for lot in account.state.lots] == [(0, 200), (150, 50)]
    state, entries = tick(account.state, datetime(2027, 2, 1, tzinfo=UTC), OFFERS)
    assert legs(entries) == [("AVAILABLE_EXPIRED", "AVAILABLE", "EXPENSE", 150)]
    assert state.lots == [] and state.wallet == {}


def test_a_refund_after_a_redemption_takes_back_what_was_redeemed() -> None:
    account = Account()
    account.feed(clearing("t1", T0))
    account.feed(redeem("k1", 200, T0 + timedelta(hours=1)))
    refund = card_event("REFUND", 10_000, occurred_at=T0 + timedelta(days=1), transaction_ref="r1", original_transaction_ref="t1")
    decision = account.feed(refund)
    assert legs(decision.entries) == [("CLAWED_BACK", "AVAILABLE", "EXPENSE", 200)]  # spent, not expired: taken back
    assert account.state is not None and account.state.wallet == {"POINTS:PTS": -200} and account.state.lots == []
    assert account.feed(redeem("k2", 1, T0 + timedelta(days=2))).outcome is Outcome.REDEMPTION_REFUSED


def test_a_lot_redeemed_whole_is_kept_until_its_expiry_which_moves_and_tells_nothing() -> None:
    account = Account()
    account.feed(clearing("t1", T0))
    account.feed(redeem("k1", 200, T0 + timedelta(hours=1)))
    assert account.state is not None and len(account.state.lots) == 1
    state, entries = tick(account.state, datetime(2027, 2, 1, tzinfo=UTC), OFFERS)
    assert entries == [] and state.lots == []
    notice_at = account.state.lots[0].notice_ms
    assert notice_at is not None  # grocery-points gives notice 7 days before: nothing left, nothing told
    (notice,) = [e for e in due_events(account.state, "acct-1", notice_at) if e.event_type.value == "EXPIRY_NOTICE"]
    told = decide(notice, OFFERS, account.state)
    assert told.notices == () and told.outcome is Outcome.NO_CHANGE


def test_the_redemption_survives_a_stored_state() -> None:
    account = Account()
    account.feed(clearing("t1", T0), redeem("k1", 120, T0 + timedelta(hours=1)))
    assert account.state is not None
    summary = split("acct-1", None, account.state, before_in_rows=True).summary
    read = assemble("acct-1", decode_summary(encode(summary)), {}.get)
    assert read.wallet == {"POINTS:PTS": 80} and read.lots[0].redeemed == 120
    assert decide(redeem("k1", 120, T0 + timedelta(hours=9)), OFFERS, read).outcome is Outcome.DUPLICATE


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"reward_kind": "CASH"}, "reward_kind"),
        ({"reward_kind": "CHARITY"}, "reward_kind"),
        ({"amount_minor": 0}, "amount_minor"),
        ({"amount_minor": None}, "amount_minor"),
        ({"currency": "EUR"}, "currency"),  # points are in PTS
        ({"event_id": "r:acct-1:bad key"}, "event_id"),
        ({"event_id": "r:other:k1", "transaction_ref": "r:other:k1"}, "event_id"),
        ({"transaction_ref": "elsewhere"}, "transaction_ref"),
        ({"reference": "4111111111111111"}, "reference"),
        ({"reference": "a;b"}, "reference"),
    ],
)
def test_a_bad_redeem_instruction_is_refused_naming_the_field(overrides: dict[str, Any], field: str) -> None:
    record = {**redeem_instruction("acct-1", "k1", "POINTS", "PTS", 10, "", "app", T0), **overrides}
    rejection = validate(record)
    assert rejection is not None and rejection.field == field


def test_account_instruction_v2_and_accrual_v8_append_only() -> None:  # accrual v8 also appends WALLET_MARK (payouts)
    v1 = json.loads((SCHEMA_DIR / "account_instruction.avsc").read_text())
    v2 = json.loads((SCHEMA_DIR / "account_instruction.v2.avsc").read_text())
    assert v2["fields"][: len(v1["fields"])][2:] == v1["fields"][2:]
    assert v2["fields"][1]["type"]["symbols"] == [*v1["fields"][1]["type"]["symbols"], "REDEEM"]
    record = redeem_instruction("acct-1", "k1", "POINTS", "PTS", 10, "ref-1", "app", T0)
    _, decoded = CODEC.decode(CODEC.encode("account_instruction", record), expected_subject="account_instruction")
    assert to_event(decoded) == to_event(record)
    old = {k: v for k, v in record.items() if k not in ("reward_kind", "amount_minor", "reference")}
    old.update(instruction="RELEASE_HOLD", event_id="release:1", transaction_ref="t1", currency="EUR")
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(v1), old)
    assert CODEC.encode("account_instruction", old)[5:] == buffer.getvalue() + b"\x00\x00\x00"
    v7 = json.loads((SCHEMA_DIR / "accrual.v7.avsc").read_text())
    v8 = json.loads((SCHEMA_DIR / "accrual.v8.avsc").read_text())
    assert v8["fields"][4]["type"]["symbols"] == [
        *v7["fields"][4]["type"]["symbols"],
        "REDEEMED",
        "REDEMPTION_REFUSED",
        "WALLET_MARK",
    ]
    assert v8["fields"][5]["type"]["symbols"] == [*v7["fields"][5]["type"]["symbols"], "REDEEMED"]
    account = Account()
    account.feed(clearing("t1", T0))
    made = next(iter(account.rows.values()))
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(v7), made.record())
    assert CODEC.encode("accrual", made.record())[5:] == buffer.getvalue()
    (entry,) = account.feed(redeem("k1", 5, T0 + timedelta(hours=1))).entries
    raw = CODEC.encode("accrual", entry.record())
    assert int.from_bytes(raw[1:5], "big") == json.loads((SCHEMA_DIR / "ids.json").read_text())["accrual.v8.avsc"] == 28
    assert CODEC.decode(raw, expected_subject="accrual")[1]["credit_book"] == "REDEEMED"


@st.composite
def sequences_with_redemptions(draw: st.DrawFn) -> list[CardEvent]:
    """Purchases of the three offers, refunds, redemptions (some above the balance, some keys reused)
    and time passing between them."""
    events: list[CardEvent] = []
    at = T0
    for index in range(draw(st.integers(1, 18))):
        at += timedelta(hours=draw(st.integers(1, 24 * 20)))
        roll = draw(st.integers(0, 5))
        if roll <= 1:
            events.append(
                clearing(f"t{index}", at, draw(st.integers(50, 20_000)), draw(st.sampled_from(("5411", "5812", "5999"))))
            )
        elif roll == 2 and index:
            ref = f"t{draw(st.integers(0, index - 1))}"
            events.append(
                card_event(
                    "REFUND",
                    draw(st.integers(50, 20_000)),
                    occurred_at=at,
                    transaction_ref=f"rf{index}",
                    original_transaction_ref=ref,
                )
            )
        else:
            key = f"k{draw(st.integers(0, 6))}"
            events.append(redeem(key, draw(st.integers(1, 600)), at))
    return events


@SEEDED
@given(events=sequences_with_redemptions(), data=st.data())
def test_the_wallet_is_what_the_entries_imply_with_redemptions(events: list[CardEvent], data: st.DataObject) -> None:
    state: AccountState | None = None
    rows: dict[str, Any] = {}
    redeemed: dict[str, int] = {}
    for event in [e for each in events for e in ((each, each) if data.draw(st.booleans()) else (each,))]:
        if state is not None and data.draw(st.booleans()):
            state, ticked = tick(state, event.occurred_at, OFFERS)
            for entry in ticked:
                assert rows.setdefault(entry.accrual_id, entry) == entry
        decision = decide(event, OFFERS, state)
        state = decision.state
        for entry in decision.entries:
            assert rows.setdefault(entry.accrual_id, entry) == entry
            if entry.entry_kind == "REDEEMED":  # once per key, never above what was available
                assert redeemed.setdefault(entry.transaction_ref, entry.amount_minor) == entry.amount_minor
        assert state.wallet == wallet_of(balances(rows.values()))
        assert all(lot.amount >= 0 and lot.redeemed >= 0 and (lot.amount or lot.redeemed) for lot in state.lots)
        if decision.outcome is Outcome.REDEEMED:
            assert state.wallet.get("POINTS:PTS", 0) >= 0  # a redemption never takes AVAILABLE below zero
    spent = sum(e.amount_minor for e in rows.values() if e.entry_kind == "REDEEMED")
    assert spent == sum(redeemed.values())


def test_the_local_stacks_bank_app_redeems_about_half_and_sometimes_too_much() -> None:
    from stream.auth import ACCOUNTS_READ, OPERATIONS, REDEMPTIONS_WRITE, Principal
    from stream.localstack.bank_app import ABOVE_EVERY, plan

    rows = [
        {"account_id": "a1", "reward_kind": "POINTS", "unit": "PTS", "available_minor": 301},
        {"account_id": "a2", "reward_kind": "STORE_CREDIT", "unit": "EUR", "available_minor": 2},
    ]
    asks = plan(rows, "run1", 1)
    assert [(a.account_id, a.amount_minor, a.key) for a in asks] == [("a1", 150, "demo-run1-1-0"), ("a2", 1, "demo-run1-1-1")]
    assert [a.amount_minor for a in plan(rows, "run1", ABOVE_EVERY)] == [302, 1]  # refused by the worker
    # a token that reads balances, or operations', does not spend them
    reader = Principal("app", frozenset({ACCOUNTS_READ, OPERATIONS}), frozenset({"a1"}))
    redeemer = Principal("app", frozenset({REDEMPTIONS_WRITE}), frozenset({"a1"}))
    assert not reader.may_redeem_for("a1") and redeemer.may_redeem_for("a1") and not redeemer.may_redeem_for("a2")
