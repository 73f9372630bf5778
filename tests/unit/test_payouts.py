"""Cash payouts in the engine (stream.core.payouts): the wallet, a run, the bank's answers, and a
state stored before wallets were kept."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.core.balances import balances
from stream.core.events import CardEvent
from stream.core.outcomes import Outcome
from stream.core.payouts import (
    cash_available,
    open_wallet_event,
    orders_of,
    payout_id,
    payout_result_event,
    payout_run_event,
    run_id_at,
)
from stream.core.rules import Decision, decide
from stream.core.state import AccountState
from stream.core.state_rows import Summary, assemble, decode_summary, encode
from stream.core.state_writes import split
from tests.factories import T0, book, card_event, legs, offer
from tests.unit.test_rules_properties import OFFER_BOOKS, PROFILE, SEEDED, reviewed_sequences, wallet_of

SPENDABLE_AT_CLEARING = book(offer(pending_days=0))  # 5% at supermarkets, AVAILABLE at the clearing
RUN_AT = T0 + timedelta(days=1)


def purchase(ref: str, amount: int, currency: str = "EUR", minutes: int = 0) -> list[CardEvent]:
    """An authorised and cleared purchase: 5% of it AVAILABLE at once."""
    at = T0 + timedelta(minutes=minutes)
    return [
        card_event(
            "AUTHORIZATION",
            amount,
            event_id=f"a-{ref}",
            transaction_ref=ref,
            currency=currency,
            billing_currency=currency,
            occurred_at=at,
        ),
        card_event(
            "CLEARING",
            amount,
            event_id=f"c-{ref}",
            transaction_ref=ref,
            currency=currency,
            billing_currency=currency,
            occurred_at=at,
        ),
    ]


def run_run(
    run_id: str = "r1", minimums: dict[str, int] | None = None, at: Any = RUN_AT, default: int | None = None
) -> CardEvent:
    return payout_run_event("acct-1", run_id, at, {"EUR": 1_000} if minimums is None else minimums, default)


class Account:
    """One account fed through the engine, keeping the ledger (one row per accrual id)."""

    def __init__(self, offers: Any = SPENDABLE_AT_CLEARING, state: AccountState | None = None) -> None:
        self.offers = offers
        self.state = state
        self.rows: dict[str, Any] = {}
        self.last: Decision | None = None

    def feed(self, *events: CardEvent) -> Decision:
        for event in events:
            self.last = decide(event, self.offers, self.state, PROFILE)
            self.state = self.last.state
            for entry in self.last.entries:
                assert self.rows.setdefault(entry.accrual_id, entry) == entry
        assert self.last is not None
        return self.last

    def books(self, currency: str = "EUR") -> dict[str, int]:
        """AVAILABLE and PAID_OUT of the account's cash in ``currency``, from the ledger's rows."""
        paid = sum(
            e.amount_minor * ((e.credit_book == "PAID_OUT") - (e.debit_book == "PAID_OUT"))
            for e in self.rows.values()
            if e.currency == currency
        )
        totals = balances(self.rows.values()).get(("acct-1", "CASH", currency), {})
        return {"available": totals.get("available_minor", 0), "paid_out": paid}


def test_a_new_account_knows_its_wallet_and_every_entry_moves_it() -> None:
    account = Account()
    account.feed(*purchase("t1", 10_000), *purchase("t2", 30_000, minutes=5))
    assert account.state is not None and account.state.wallet == {"CASH:EUR": 2_000}
    assert cash_available(account.state) == {"EUR": 2_000}
    account.feed(
        card_event(
            "REFUND", 10_000, event_id="r-t1", transaction_ref="rf-1", original_transaction_ref="t1", processing_code="REFUND"
        )
    )
    assert account.state.wallet == {"CASH:EUR": 1_500} == wallet_of(balances(account.rows.values()))


def test_a_run_pays_available_cash_at_or_above_the_minimum_per_currency() -> None:
    account = Account()
    account.feed(*purchase("t1", 30_000), *purchase("u1", 10_000, currency="USD", minutes=1))  # 15.00 EUR, 5.00 USD
    decision = account.feed(run_run(minimums={"EUR": 1_500, "USD": 600}))
    assert decision.outcome is Outcome.PAID_OUT
    assert legs(decision.entries) == [("PAID_OUT", "AVAILABLE", "PAID_OUT", 1_500)]
    (entry,) = decision.entries
    pid = payout_id("r1", "acct-1", "EUR")
    assert entry.accrual_id == "payout-run:r1:acct-1#0" and entry.transaction_ref == pid and entry.currency == "EUR"
    assert entry.explanation.detail == (
        f"paid out 15.00 EUR to the customer's bank account (payout {pid}, run r1; minimum 15.00 EUR)"
    )
    assert [(o.payout_id, o.account_id, o.amount_minor, o.currency, o.run_id) for o in orders_of(decision.entries)] == [
        (pid, "acct-1", 1_500, "EUR", "r1")
    ]
    assert account.state is not None and account.state.payouts[pid].status == "REQUESTED"
    assert account.state is not None and account.state.wallet == {"CASH:USD": 500}  # below its minimum: kept
    assert account.books() == {"available": 0, "paid_out": 1_500}
    # a currency the run does not name is paid only with a default minimum
    assert account.feed(run_run("r2", minimums={"EUR": 1})).outcome is Outcome.NOTHING_TO_PAY
    decision = account.feed(run_run("r3", minimums={"EUR": 1}, default=500))
    assert [(o.currency, o.amount_minor) for o in orders_of(decision.entries)] == [("USD", 500)]


def test_points_and_store_credit_are_never_paid_out() -> None:
    points = book(offer(offer_id="pts", reward_kind="POINTS", rate_bps=None, points_per_unit=2, pending_days=0, currency="EUR"))
    account = Account(points)
    account.feed(*purchase("t1", 100_000))
    assert account.state is not None and account.state.wallet == {"POINTS:PTS": 2_000}
    decision = account.feed(run_run(minimums={"EUR": 1}, default=1))
    assert decision.outcome is Outcome.NOTHING_TO_PAY and decision.entries == ()


def test_a_repeated_run_pays_nothing_twice() -> None:
    account = Account()
    account.feed(*purchase("t1", 40_000))
    first = account.feed(run_run())
    assert first.outcome is Outcome.PAID_OUT
    again = account.feed(run_run())  # the same run redelivered: the same event
    assert again.outcome is Outcome.DUPLICATE
    assert again.entries == first.entries  # re-emitted, same accrual ids: the ledger writes nothing new
    assert orders_of(again.entries) == orders_of(first.entries)  # asked again under the same payout id
    account.feed(*purchase("t2", 40_000, minutes=10))
    later = account.feed(run_run(at=RUN_AT + timedelta(hours=1)))  # the same run id at another time: a conflict
    assert later.outcome is Outcome.DUPLICATE_CONFLICT and later.entries == ()
    assert account.books() == {"available": 2_000, "paid_out": 2_000}


def test_a_rejection_returns_the_money_and_a_confirmation_moves_none() -> None:
    account = Account()
    account.feed(*purchase("t1", 40_000))
    account.feed(run_run())
    pid = payout_id("r1", "acct-1", "EUR")
    rejected = account.feed(payout_result_event("acct-1", pid, "REJECTED", RUN_AT + timedelta(hours=1), "account_closed"))
    assert rejected.outcome is Outcome.PAYOUT_REJECTED
    assert legs(rejected.entries) == [("PAYOUT_RETURNED", "PAID_OUT", "AVAILABLE", 2_000)]
    assert rejected.entries[0].explanation.reason == "account_closed"
    assert rejected.entries[0].explanation.detail == (
        f"payout {pid} of run r1 rejected by the bank (account_closed): 20.00 EUR back to AVAILABLE"
    )
    assert account.books() == {"available": 2_000, "paid_out": 0}
    # a confirmation after the rejection: the first answer stands
    late = account.feed(payout_result_event("acct-1", pid, "CONFIRMED", RUN_AT + timedelta(hours=2)))
    assert late.outcome is Outcome.NO_CHANGE and late.entries == ()
    # the next run pays the returned money under its own payout id
    second = account.feed(run_run("r2"))
    pid2 = payout_id("r2", "acct-1", "EUR")
    assert [(o.payout_id, o.amount_minor) for o in orders_of(second.entries)] == [(pid2, 2_000)]
    confirmed = account.feed(payout_result_event("acct-1", pid2, "CONFIRMED", RUN_AT + timedelta(hours=3)))
    assert confirmed.outcome is Outcome.PAYOUT_CONFIRMED and confirmed.entries == ()
    # a rejection after the confirmation returns nothing
    after = account.feed(payout_result_event("acct-1", pid2, "REJECTED", RUN_AT + timedelta(hours=4), "late"))
    assert after.outcome is Outcome.NO_CHANGE and after.entries == ()
    assert account.books() == {"available": 0, "paid_out": 2_000}
    # an answer for a payout the account never made
    unknown = account.feed(payout_result_event("acct-1", payout_id("r9", "acct-1", "EUR"), "REJECTED", RUN_AT, "x"))
    assert unknown.outcome is Outcome.UNKNOWN_TRANSACTION and unknown.entries == ()


def test_a_clawback_after_a_payout_leaves_available_negative_and_the_next_run_waits() -> None:
    account = Account()
    account.feed(*purchase("t1", 40_000), *purchase("t2", 20_000, minutes=1))  # 20.00 + 10.00 EUR
    account.feed(run_run())
    account.feed(
        card_event(
            "REFUND",
            40_000,
            event_id="r-t1",
            transaction_ref="rf-1",
            original_transaction_ref="t1",
            processing_code="REFUND",
            occurred_at=RUN_AT + timedelta(minutes=1),
        )
    )
    assert account.books() == {"available": -2_000, "paid_out": 3_000}
    assert account.state is not None and account.state.wallet == {"CASH:EUR": -2_000}
    assert account.feed(run_run("r2", at=RUN_AT + timedelta(days=1))).outcome is Outcome.NOTHING_TO_PAY
    account.feed(*purchase("t3", 50_000, minutes=3000))  # 25.00: back to 5.00, under the 10.00 minimum
    assert account.feed(run_run("r3", at=RUN_AT + timedelta(days=3))).outcome is Outcome.NOTHING_TO_PAY
    account.feed(*purchase("t4", 100_000, minutes=6000))  # 50.00 more: 55.00
    decision = account.feed(run_run("r4", at=RUN_AT + timedelta(days=5)))
    assert [o.amount_minor for o in orders_of(decision.entries)] == [5_500]
    assert account.books() == {"available": 0, "paid_out": 8_500}


def test_a_minimum_below_one_minor_unit_or_an_unknown_answer_is_refused() -> None:
    with pytest.raises(ValueError, match="field minimums: invalid_field"):
        payout_run_event("acct-1", "r1", RUN_AT, {"EUR": 0})
    with pytest.raises(ValueError, match="field minimums: unknown_currency"):
        payout_run_event("acct-1", "r1", RUN_AT, {"XXY": 10})
    with pytest.raises(ValueError, match="field default_minimum_minor: invalid_field"):
        payout_run_event("acct-1", "r1", RUN_AT, {}, 0)
    for bad in ("", "a:b", "-x", "x" * 65):
        with pytest.raises(ValueError, match="field run_id: invalid_field"):
            payout_run_event("acct-1", bad, RUN_AT, {"EUR": 1})
    with pytest.raises(ValueError, match="field status: invalid_field"):
        payout_result_event("acct-1", "p:r1:acct-1:EUR", "MAYBE", RUN_AT)
    with pytest.raises(ValueError, match="field payout_id: invalid_field"):  # another account's payout
        payout_result_event("acct-1", "p:r1:acct-2:EUR", "CONFIRMED", RUN_AT)
    with pytest.raises(ValueError, match="field reason_code: invalid_field"):
        payout_result_event("acct-1", "p:r1:acct-1:EUR", "REJECTED", RUN_AT, "has spaces")
    with pytest.raises(ValueError, match="field reason_code: card_number_detected"):
        payout_result_event("acct-1", "p:r1:acct-1:EUR", "REJECTED", RUN_AT, "4111111111111111")
    assert run_id_at(T0) == "2026-12-01T1000Z"


# --- a state stored before wallets were kept ------------------------------------------------------


def without_wallet(state: AccountState) -> AccountState:
    """``state`` as an earlier version stored it: its summary without a wallet, read back."""
    summary = split("acct-1", None, state, before_in_rows=True).summary
    plain = msgspec.to_builtins(summary)
    plain.pop("wallet")
    raw = msgspec.msgpack.encode(plain)
    read = assemble("acct-1", decode_summary(raw), {}.get)
    assert read is not None
    return read


def test_a_stored_wallet_reads_back_and_an_older_state_has_none() -> None:
    account = Account()
    account.feed(*purchase("t1", 40_000))
    assert account.state is not None
    summary = split("acct-1", None, account.state, before_in_rows=True).summary
    read = assemble("acct-1", decode_summary(encode(summary)), {}.get)
    assert read is not None and read.wallet == {"CASH:EUR": 2_000}
    empty = split("acct-1", None, AccountState(wallet={}), before_in_rows=True).summary
    assert msgspec.msgpack.decode(encode(empty), type=Summary).wallet == {}  # known and empty is kept, not omitted
    assert without_wallet(account.state).wallet is None


def test_a_wallet_not_known_is_never_paid_from_and_stays_not_known() -> None:
    account = Account()
    account.feed(*purchase("t1", 40_000))
    assert account.state is not None
    account.state = without_wallet(account.state)
    account.feed(*purchase("t2", 40_000, minutes=1))
    assert account.state.wallet is None  # its entries do not make a guess of it
    decision = account.feed(run_run())
    assert decision.outcome is Outcome.WALLET_UNKNOWN and decision.entries == ()
    assert cash_available(account.state) is None


def test_an_operator_opens_a_wallet_from_a_ledger_that_has_caught_up() -> None:
    account = Account()
    account.feed(*purchase("t1", 40_000))
    assert account.state is not None
    account.state = without_wallet(account.state)
    latest = max(account.rows)  # the ledger's latest entry of the account: c-t1#...
    ledger = [("CASH", "EUR", 2_000)]
    behind = account.feed(open_wallet_event("acct-1", "open-1", RUN_AT, "ops", "a-t1#0", ledger))
    assert behind.outcome is Outcome.LEDGER_BEHIND and account.state.wallet is None
    opened = account.feed(open_wallet_event("acct-1", "open-2", RUN_AT, "ops", latest, ledger))
    assert opened.outcome is Outcome.WALLET_OPENED and account.state.wallet == {"CASH:EUR": 2_000}
    again = account.feed(open_wallet_event("acct-1", "open-3", RUN_AT, "ops", latest, [("CASH", "EUR", 9_999)]))
    assert again.outcome is Outcome.NO_CHANGE and account.state.wallet == {"CASH:EUR": 2_000}
    assert [o.amount_minor for o in orders_of(account.feed(run_run()).entries)] == [2_000]


def quiet_account_without_wallet() -> Account:
    """An account stored before wallets were kept, with 20.00 EUR AVAILABLE from one purchase, then more purchases
    that earned nothing (declined) than the worker remembers: its money entries are forgotten."""
    from stream.core.memory import RECENT_EVENTS_LIMIT

    account = Account()
    account.feed(*purchase("t1", 40_000))
    assert account.state is not None
    account.state = without_wallet(account.state)
    for n in range(RECENT_EVENTS_LIMIT + 1):
        declined = card_event("AUTHORIZATION", 5_000, event_id=f"d-{n}", transaction_ref=f"d-{n}", response_code="51")
        assert account.feed(declined).outcome is Outcome.DECLINED
    return account


def test_an_account_whose_recent_events_moved_no_money_is_marked_then_opened_against_the_mark() -> None:
    from stream.core.entries import WALLET_MARK

    account = quiet_account_without_wallet()
    assert account.state is not None
    latest = max(r for r in account.rows if r.startswith("c-t1"))
    ledger = [("CASH", "EUR", 2_000)]
    # The ledger's latest entry cannot be checked any more: the opening marks the place instead.
    marked = account.feed(open_wallet_event("acct-1", "open-1", RUN_AT, "ops", latest, ledger))
    assert marked.outcome is Outcome.WALLET_MARKED and account.state.wallet is None
    ((mark,),) = [marked.entries]
    assert (mark.entry_kind, mark.amount_minor, mark.debit_book, mark.credit_book) == (WALLET_MARK, 0, "NONE", "NONE")
    assert (mark.accrual_id, mark.currency, mark.explanation.reason) == ("open-1#0", "XXX", "wallet_mark")
    # Asked again before the mark reached the ledger (no mark named, or an older one): behind, no second mark.
    for old_mark in (None, "open-wallet:open-0:acct-1#0"):
        behind = account.feed(open_wallet_event("acct-1", f"open-2{old_mark}", RUN_AT, "ops", latest, ledger, old_mark))
        assert behind.outcome is Outcome.LEDGER_BEHIND and behind.entries == () and account.state.wallet is None
    # Once the ledger holds the mark it holds everything before it: opened.
    opened = account.feed(open_wallet_event("acct-1", "open-3", RUN_AT, "ops", latest, ledger, mark.accrual_id))
    assert opened.outcome is Outcome.WALLET_OPENED and account.state.wallet == {"CASH:EUR": 2_000}
    # The opening that made the mark, redelivered, is the same decision: the same mark again, nothing opened twice.
    again = account.feed(open_wallet_event("acct-1", "open-1", RUN_AT, "ops", latest, ledger))
    assert again.outcome is Outcome.DUPLICATE and again.entries == marked.entries


def test_a_money_entry_after_the_mark_is_what_the_next_opening_is_checked_against() -> None:
    account = quiet_account_without_wallet()
    (mark,) = account.feed(open_wallet_event("acct-1", "open-1", RUN_AT, "ops", None, [])).entries
    account.feed(*purchase("t2", 20_000, minutes=5))  # moves money after the mark
    latest = max(r for r in account.rows if "t2" in r)
    stale = account.feed(open_wallet_event("acct-1", "open-2", RUN_AT, "ops", "c-t1#1", [], mark.accrual_id))
    assert stale.outcome is Outcome.LEDGER_BEHIND and account.state.wallet is None
    opened = account.feed(open_wallet_event("acct-1", "open-3", RUN_AT, "ops", latest, [("CASH", "EUR", 3_000)], mark.accrual_id))
    assert opened.outcome is Outcome.WALLET_OPENED and account.state.wallet == {"CASH:EUR": 3_000}


# --- the wallet is always the AVAILABLE the entries imply ----------------------------------------


@st.composite
def sequences_with_payouts(draw: st.DrawFn) -> list[CardEvent]:
    """Holds, reviews and time passing (test_rules_properties), with payout runs and the bank's
    answers (some repeated, some for payouts never made) between them."""
    events = draw(reviewed_sequences())
    out: list[CardEvent] = []
    runs: list[str] = []
    for index, event in enumerate(events):
        out.append(event)
        roll = draw(st.integers(0, 5))
        at = event.occurred_at + timedelta(minutes=1)
        if roll == 0:
            runs.append(f"r{index}")
            out.append(payout_run_event("acct-1", runs[-1], at, {"EUR": draw(st.sampled_from((1, 100, 2_000)))}))
        elif roll == 1 and runs:
            pid = payout_id(draw(st.sampled_from([*runs, "never"])), "acct-1", "EUR")
            out.append(payout_result_event("acct-1", pid, draw(st.sampled_from(("CONFIRMED", "REJECTED"))), at, "r"))
    return out


@SEEDED
@given(
    offers_name=st.sampled_from(["grocery-5", "no-return-window", "capped-and-stacked"]),
    events=sequences_with_payouts(),
    data=st.data(),
)
def test_the_wallet_is_the_available_the_entries_imply_and_nothing_is_paid_twice(
    offers_name: str, events: list[CardEvent], data: st.DataObject
) -> None:
    offers = OFFER_BOOKS[offers_name]
    delivered = [e for event in events for e in ((event, event) if data.draw(st.booleans()) else (event,))]
    state: AccountState | None = None
    rows: dict[str, Any] = {}
    ordered: dict[str, int] = {}
    for event in delivered:
        if data.draw(st.integers(0, 3)) == 0 and state is not None:  # stored and read back between events
            summary = split("acct-1", None, state, before_in_rows=True).summary
            state = assemble("acct-1", decode_summary(encode(summary)), {}.get)
        decision = decide(event, offers, state, PROFILE)
        state = decision.state
        for entry in decision.entries:
            assert rows.setdefault(entry.accrual_id, entry) == entry
        for order in orders_of(decision.entries):  # a redelivery asks again: the same payout, the same amount
            assert ordered.setdefault(order.payout_id, order.amount_minor) == order.amount_minor > 0
        totals = balances(rows.values())
        assert state.wallet == wallet_of(totals)
        paid_out = sum(e.amount_minor * ((e.credit_book == "PAID_OUT") - (e.debit_book == "PAID_OUT")) for e in rows.values())
        open_or_confirmed = sum(p.amount for p in state.payouts.values() if p.status != "REJECTED")
        assert paid_out == open_or_confirmed >= 0  # every payout kept, and nothing more, is in PAID_OUT
        assert sum(e.amount_minor for e in rows.values() if e.entry_kind == "PAID_OUT") == sum(ordered.values())


# --- the ledger's record: accrual v7 ---------------------------------------------------------------


def test_accrual_v7_appends_only_the_payout_symbols_and_old_entries_keep_their_bytes() -> None:
    import io
    import json
    import struct

    import fastavro

    from schemas.codec import SCHEMA_DIR, Codec

    v6 = json.loads((SCHEMA_DIR / "accrual.v6.avsc").read_text())
    v7 = json.loads((SCHEMA_DIR / "accrual.v7.avsc").read_text())
    kinds6, kinds7 = (s["fields"][4]["type"]["symbols"] for s in (v6, v7))
    books6, books7 = (s["fields"][5]["type"]["symbols"] for s in (v6, v7))
    assert kinds7 == [*kinds6, "PAID_OUT", "PAYOUT_RETURNED"] and books7 == [*books6, "PAID_OUT"]
    v7["fields"][4]["type"]["symbols"], v7["fields"][5]["type"]["symbols"] = kinds6, books6
    assert v7["fields"] == v6["fields"]
    codec = Codec()
    account = Account()
    account.feed(*purchase("t1", 40_000))
    (paid,) = account.feed(run_run()).entries
    raw = codec.encode("accrual", paid.record())
    # written with the newest version (accrual.v8.avsc appended the redemption symbols after v7's)
    assert int.from_bytes(raw[1:5], "big") == json.loads((SCHEMA_DIR / "ids.json").read_text())["accrual.v8.avsc"]
    record = codec.decode(raw, expected_subject="accrual")[1]
    assert (record["entry_kind"], record["debit_book"], record["credit_book"]) == ("PAID_OUT", "AVAILABLE", "PAID_OUT")
    made = next(e for e in account.rows.values() if e.entry_kind == "MADE_AVAILABLE" or e.credit_book == "AVAILABLE")
    buffer = io.BytesIO()  # an entry v6 could write: the same body bytes under v7
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(v6), made.record())
    assert codec.encode("accrual", made.record())[5:] == buffer.getvalue()
    assert struct.unpack(">bI", codec.encode("accrual", made.record())[:5])[1] == 28


def test_the_latest_scheduled_run_and_who_has_cash() -> None:
    from stream.core.payouts import has_cash, latest_run_ms

    def ms(at: Any) -> int:
        return int(at.timestamp() * 1000)

    schedule = (120, 870)  # 02:00 and 14:30 UTC
    assert latest_run_ms((), ms(T0)) is None
    assert latest_run_ms(schedule, ms(T0)) == ms(T0.replace(hour=2, minute=0))  # T0 is 10:00
    assert latest_run_ms(schedule, ms(T0.replace(hour=14, minute=30))) == ms(T0.replace(hour=14, minute=30))
    assert latest_run_ms(schedule, ms(T0.replace(hour=1))) == ms((T0 - timedelta(days=1)).replace(hour=14, minute=30))
    assert has_cash({"CASH:EUR": 1}) and has_cash({"POINTS:PTS": 5, "CASH:USD": 3})
    assert not has_cash(None) and not has_cash({}) and not has_cash({"CASH:EUR": -5, "STORE_CREDIT:EUR": 100})


def test_a_confirmation_tells_the_customer_once_per_answer_and_again_on_a_redelivery() -> None:
    from stream.core.notices import PaidNotice, from_notice

    account = Account()
    account.feed(*purchase("t1", 40_000))
    account.feed(run_run())
    pid = payout_id("r1", "acct-1", "EUR")
    confirmation = payout_result_event("acct-1", pid, "CONFIRMED", RUN_AT + timedelta(hours=1))
    decided = account.feed(confirmation)
    (notice,) = decided.notices
    assert notice == PaidNotice(f"{confirmation.event_id}#paid", "acct-1", 2_000, "EUR", confirmation.occurred_at_ms)
    english, french = from_notice(notice, "en"), from_notice(notice, "fr")
    assert (english.kind, english.amount_minor, english.currency, english.reward_kind) == ("PAID", 2_000, "EUR", "CASH")
    assert english.line == "EUR 20.00 cashback paid to your account."
    assert french.line == "Versement de 20,00\u00a0€ de cashback sur votre compte."
    assert account.feed(confirmation).notices == (notice,)  # redelivered: the same notice, the same id
    other = payout_result_event("acct-1", pid, "CONFIRMED", RUN_AT + timedelta(hours=2))  # the bank says it again
    assert account.feed(other).notices == () and account.feed(other).notices == ()
    account.feed(*purchase("t2", 40_000, minutes=5))
    account.feed(run_run("r2", at=RUN_AT + timedelta(days=1)))
    rejection = payout_result_event("acct-1", payout_id("r2", "acct-1", "EUR"), "REJECTED", RUN_AT + timedelta(days=1), "x")
    assert account.feed(rejection).notices == () and account.feed(rejection).notices == ()


def test_a_wallet_opening_message_is_validated_and_becomes_the_accounts_open_wallet_event() -> None:
    from stream.core.events import EventType, WalletOpening, to_event, validate
    from stream.payout_runs import opening_record

    record = opening_record("open-1", "acct-1", RUN_AT, "ops-1", "c-t1#1", [("CASH", "EUR", 2_000), ("POINTS", "PTS", 30)])
    assert validate(record) is None
    event = to_event(record)
    assert (event.event_id, event.event_type, event.account_id) == ("open-wallet:open-1:acct-1", EventType.OPEN_WALLET, "acct-1")
    assert event.note == WalletOpening("ops-1", "c-t1#1", (("CASH", "EUR", 2_000), ("POINTS", "PTS", 30)))
    for change, reason in (
        ({"actor": ""}, "invalid_field"),
        ({"actor": "4111 1111 1111 1111"}, "card_number_detected"),
        ({"available": [{"reward_kind": "CASH", "unit": "EURO", "amount_minor": 1}]}, "unknown_currency"),
        ({"available": [{"reward_kind": "GOLD", "unit": "EUR", "amount_minor": 1}]}, "invalid_field"),
        ({"available": [{"reward_kind": "CASH", "unit": "EUR", "amount_minor": 1}] * 2}, "invalid_field"),
    ):
        bad = {**record, "wallet_opening": {**record["wallet_opening"], **change}}
        rejection = validate(bad)
        assert rejection is not None and (rejection.field, rejection.reason.value) == ("wallet_opening", reason)


def test_a_scheduled_run_asks_only_accounts_it_would_pay() -> None:
    from stream.core.payouts import would_pay

    def with_wallet(wallet: dict[str, int] | None) -> AccountState:
        return AccountState(wallet=wallet)

    assert would_pay(with_wallet({"CASH:EUR": 1_000}), {"EUR": 1_000}, None)
    assert not would_pay(with_wallet({"CASH:EUR": 999}), {"EUR": 1_000}, None)
    assert not would_pay(with_wallet({"CASH:USD": 5_000}), {"EUR": 1_000}, None)  # no minimum for USD: not paid
    assert would_pay(with_wallet({"CASH:USD": 5_000}), {"EUR": 1_000}, 5_000)
    assert not would_pay(with_wallet({"POINTS:PTS": 10_000}), {}, 1)
    assert not would_pay(with_wallet(None), {}, 1) and not would_pay(None, {}, 1)


def test_the_local_stacks_core_banking_stand_in_answers_by_payout_id() -> None:
    from stream.core.events import validate
    from stream.localstack.core_banking import REJECTION_REASON, answer_for, result_record

    ids = [payout_id("2026-12-03T0200Z", f"acct-{n:06d}", "EUR") for n in range(1_000)]
    answers = [answer_for(pid) for pid in ids]
    assert answers == [answer_for(pid) for pid in ids]  # the same payout, the same answer
    rejected = [a for a in answers if a[0] == "REJECTED"]
    assert 50 <= len(rejected) <= 150 and all(reason == REJECTION_REASON for _, reason in rejected)
    assert all(a == ("CONFIRMED", None) for a in answers if a[0] != "REJECTED")
    instruction = {"payout_id": ids[0], "account_id": "acct-000000", "amount_minor": 100, "currency": "EUR"}
    record = result_record(instruction, RUN_AT)
    assert validate(record) is None and record["status"] == answer_for(ids[0])[0]
