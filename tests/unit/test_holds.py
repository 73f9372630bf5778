"""The abuse controls through the pure engine (``stream.core.abuse``, ``stream.core.holds``): each rule
holds a flagged reward in HELD with its reason and figures and leaves an unflagged one alone; a
release or a forfeit moves it once; the state that remembers it is bounded and survives storage."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from stream import instructions
from stream.backtest import Replay
from stream.composition import REPO_ROOT, UsageError, read_abuse_rules
from stream.core.abuse import (
    DEFAULT_RULES,
    MERCHANT_CONCENTRATION,
    NO_RULES,
    PURCHASE_BURST,
    REFUND_LOOP,
    AbuseRules,
    AbuseRulesError,
    PurchaseBurst,
    RefundLoop,
    parse_rules,
)
from stream.core.balances import balances
from stream.core.entries import Entry
from stream.core.events import CardEvent, EventType, RejectReason, to_event, validate
from stream.core.holds import KEPT_REFUNDS, remembered
from stream.core.offers import OfferBook
from stream.core.outcomes import Outcome
from stream.core.rules import decide
from stream.core.state_rows import assemble, decode_summary, encode
from stream.core.state_writes import split
from stream.core.working_copy import AccountStep
from tests.factories import T0, book, card_event, offer, totals

ACCOUNT = "acct-1"
KEY = (ACCOUNT, "CASH", "EUR")


class Account:
    """One account's events through the back-test's fold (the matcher's decide, budgets, time)."""

    def __init__(self, offers: OfferBook | None = None, rules: AbuseRules = DEFAULT_RULES) -> None:
        self.replay = Replay(offers or book(offer(pending_days=14)), abuse=rules)
        self.count = 0

    def send(self, event: CardEvent) -> Outcome:
        self.replay.decide(event)
        return Outcome(self.replay.outcomes[-1])

    def purchase(self, ref: str, amount: int, at: datetime, merchant: str = "m-grocer", clear: bool = True) -> None:
        self.send(card_event("AUTHORIZATION", amount, transaction_ref=ref, occurred_at=at, merchant_id=merchant))
        if clear:
            self.send(
                card_event("CLEARING", amount, transaction_ref=ref, occurred_at=at + timedelta(hours=1), merchant_id=merchant)
            )

    def refund(self, ref: str, amount: int, at: datetime) -> Outcome:
        return self.send(
            card_event(
                "REFUND",
                amount,
                transaction_ref=f"refund-{ref}-{at.timestamp():.0f}",
                original_transaction_ref=ref,
                processing_code="REFUND",
                occurred_at=at,
            )
        )

    def instruct(self, record: dict[str, Any]) -> Outcome:
        assert validate(record) is None
        return self.send(to_event(record))

    def review(self, kind: str, ref: str, at: datetime, offer_id: str | None = None) -> Outcome:
        return self.instruct(instructions.review(kind, ACCOUNT, ref, offer_id, "EUR", "ops-anna", "receipts checked", at))

    def pass_time(self, until: datetime) -> None:
        self.replay.pass_time(until)

    @property
    def entries(self) -> list[Entry]:
        return [e for e in self.replay.entries.values() if e.entry_kind != "NOT_EARNED"]

    def of(self, ref: str, kind: str | None = None) -> list[Entry]:
        return [e for e in self.entries if e.purchase_ref == ref and (kind is None or e.entry_kind == kind)]

    def balances(self) -> dict[str, int]:
        return balances(self.replay.entries.values())[KEY]


# --- the rules and their file ---------------------------------------------------------------------


def test_the_defaults_are_the_documented_ones_and_the_example_file_says_them() -> None:
    assert DEFAULT_RULES.refund_loop == RefundLoop(enabled=True, min_refunds=3, window_days=30, min_share_percent=50)
    assert (DEFAULT_RULES.purchase_burst.min_purchases, DEFAULT_RULES.purchase_burst.window_minutes) == (5, 60)
    assert DEFAULT_RULES.purchase_burst.below_minor["EUR"] == 1_000
    rule = DEFAULT_RULES.merchant_concentration
    assert (rule.max_accounts, rule.min_total_minor["EUR"], rule.window_days, rule.hold_days) == (3, 20_000, 7, 30)
    assert read_abuse_rules(REPO_ROOT / "deploy" / "abuse" / "rules.yaml") == DEFAULT_RULES
    assert parse_rules(None) == parse_rules({}) == DEFAULT_RULES


def test_a_field_left_out_keeps_its_default() -> None:
    rules = parse_rules({"purchase_burst": {"min_purchases": 3, "below_minor": {"EUR": 500}}, "refund_loop": {"enabled": False}})
    assert rules.purchase_burst == PurchaseBurst(min_purchases=3, window_minutes=60, below_minor={"EUR": 500})
    assert not rules.refund_loop.enabled and rules.refund_loop.min_refunds == 3
    assert rules.merchant_concentration == DEFAULT_RULES.merchant_concentration


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"purchase_burst": {"min_purchases": 1}}, "field 'purchase_burst.min_purchases': 1 is outside 2..100"),
        ({"purchase_burst": {"min_purchases": "5"}}, "field 'purchase_burst.min_purchases': expected a whole number, got '5'"),
        ({"refund_loop": {"enabled": "yes"}}, "field 'refund_loop.enabled': expected true or false, got 'yes'"),
        (
            {"refund_loop": {"window": 30}},
            "field 'refund_loop.window': unknown (expected one of enabled, min_refunds, window_days, min_share_percent)",
        ),
        ({"refund_loop": {"min_share_percent": 101}}, "field 'refund_loop.min_share_percent': 101 is outside 1..100"),
        ({"refund_loops": {}}, "field 'refund_loops': unknown"),
        ({"purchase_burst": {"below_minor": {"EURO": 100}}}, "field 'purchase_burst.below_minor.EURO': not an ISO 4217 currency"),
        ({"purchase_burst": {"below_minor": {"PTS": 100}}}, "field 'purchase_burst.below_minor.PTS': not an ISO 4217 currency"),
        ({"merchant_concentration": {"min_total_minor": {"EUR": 0}}}, "field 'merchant_concentration.min_total_minor.EUR'"),
        ({"merchant_concentration": {"window_days": 91}}, "field 'merchant_concentration.window_days': 91 is outside 1..90"),
        ({"merchant_concentration": []}, "field 'merchant_concentration': expected a mapping"),
    ],
)
def test_a_bad_rule_is_refused_naming_its_field(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(AbuseRulesError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        parse_rules(raw)


def test_a_bad_file_stops_the_process_naming_the_file_and_the_field(tmp_path: Any) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("refund_loop:\n  min_refunds: 0\n")
    with pytest.raises(UsageError, match=r"abuse rules file .*rules.yaml \(ABUSE_RULES_FILE\): field 'refund_loop.min_refunds'"):
        read_abuse_rules(path)
    with pytest.raises(UsageError, match="no such file"):
        read_abuse_rules(tmp_path / "missing.yaml")
    path.write_text("refund_loop: [\n")
    with pytest.raises(UsageError, match="not valid YAML at line"):
        read_abuse_rules(path)


# --- refund loops ---------------------------------------------------------------------------------


def loop_account(refunded: int) -> Account:
    """Purchases p1..p3 refunded ``refunded`` of them within days, then purchase p9 whose 14-day
    window ends afterwards."""
    account = Account()
    for n in range(1, 4):
        account.purchase(f"p{n}", 10_000, T0 + timedelta(days=n))
    for n in range(1, refunded + 1):
        account.refund(f"p{n}", 10_000, T0 + timedelta(days=5 + n))
    account.purchase("p9", 4_000, T0 + timedelta(days=10))
    account.pass_time(T0 + timedelta(days=40))
    return account


def test_a_refund_loop_holds_the_reward_that_would_become_available() -> None:
    account = loop_account(refunded=3)
    (held,) = account.of("p9", "HELD")
    assert (held.debit_book, held.credit_book, held.amount_minor) == ("CONFIRMED", "HELD", 200)
    assert held.explanation.reason == REFUND_LOOP
    assert held.explanation.detail == (
        "return window of 14 days over: held for review (refund_loop: 3 of 4 rewarded purchases refunded (75%) in the "
        "30 days to 2026-12-25 11:00 UTC; rule: 3 or more and 50% or more)"
    )
    assert not account.of("p9", "MADE_AVAILABLE")
    assert account.balances()["held_minor"] == 200 and account.balances()["available_minor"] == 0
    assert "held" in account.replay.outcomes


def test_two_refunds_are_no_loop_and_the_reward_becomes_available() -> None:
    account = loop_account(refunded=2)
    assert [e.credit_book for e in account.of("p9") if e.entry_kind == "MADE_AVAILABLE"] == ["AVAILABLE"]
    assert not [e for e in account.entries if "HELD" in (e.debit_book, e.credit_book)]
    assert account.balances()["held_minor"] == 0


def heavy_shopper(rules: AbuseRules) -> Account:
    """Six rewarded purchases in a week, three of them refunded (50% counting the purchase after)."""
    account = Account(rules=rules)
    for n in range(1, 7):
        account.purchase(f"p{n}", 10_000, T0 + timedelta(days=n))
    for n in range(1, 4):
        account.refund(f"p{n}", 10_000, T0 + timedelta(days=7, hours=n))
    account.purchase("p9", 4_000, T0 + timedelta(days=10))
    account.pass_time(T0 + timedelta(days=40))
    return account


def test_a_shoppers_ordinary_returns_are_no_loop_below_the_share() -> None:
    """Three refunds among seven rewarded purchases of the window (42%): under the 50% share."""
    account = heavy_shopper(DEFAULT_RULES)
    assert account.of("p9", "MADE_AVAILABLE") and not [e for e in account.entries if e.credit_book == "HELD"]
    strict = heavy_shopper(parse_rules({"refund_loop": {"min_share_percent": 40}}))
    (held,) = strict.of("p9", "HELD")
    assert "3 of 7 rewarded purchases refunded (42%)" in held.explanation.detail


def test_partial_refunds_of_one_purchase_count_once_and_old_refunds_not_at_all() -> None:
    account = Account()
    for n in (1, 2):
        account.purchase(f"p{n}", 10_000, T0 + timedelta(days=n))
    for hours in (1, 2, 3):  # three partial refunds of p1
        account.refund("p1", 1_000, T0 + timedelta(days=3, hours=hours))
    account.refund("p2", 1_000, T0 + timedelta(days=3))
    account.purchase("p3", 4_000, T0 + timedelta(days=4))
    account.pass_time(T0 + timedelta(days=20))
    assert account.of("p3", "MADE_AVAILABLE") and not account.of("p3", "HELD")  # 2 purchases refunded, not 4
    # a refund of a purchase that earned nothing (no offer at that MCC) is no loop either
    account.send(card_event("CLEARING", 5_000, transaction_ref="p4", mcc="5999", occurred_at=T0 + timedelta(days=21)))
    account.refund("p4", 5_000, T0 + timedelta(days=22))
    account.purchase("p5", 4_000, T0 + timedelta(days=22))
    account.pass_time(T0 + timedelta(days=40))
    assert account.of("p5", "MADE_AVAILABLE")
    # and refunds older than the window are forgotten
    later = Account()
    for n in range(1, 4):
        later.purchase(f"p{n}", 10_000, T0 + timedelta(days=n))
        later.refund(f"p{n}", 10_000, T0 + timedelta(days=n, hours=5))
    later.purchase("p9", 4_000, T0 + timedelta(days=40))  # its window ends on day 54: the refunds are 50 days old
    later.pass_time(T0 + timedelta(days=60))
    assert later.of("p9", "MADE_AVAILABLE") and not later.of("p9", "HELD")


# --- bursts of small purchases --------------------------------------------------------------------


def burst_account(purchases: int, amount: int = 500, minutes: int = 10, merchants: tuple[str, ...] = ("m-kiosk",)) -> Account:
    account = Account(book(offer(pending_days=14, mccs=[])))
    for n in range(purchases):
        merchant = merchants[n % len(merchants)]
        account.purchase(f"b{n}", amount, T0 + timedelta(minutes=n * minutes), merchant=merchant)
    account.pass_time(T0 + timedelta(days=30))
    return account


def test_a_burst_of_small_purchases_at_one_merchant_holds_each_of_them() -> None:
    account = burst_account(5)
    for n in range(5):
        (held,) = account.of(f"b{n}", "HELD")
        assert held.explanation.reason == PURCHASE_BURST and held.merchant_id == "m-kiosk"
        assert held.explanation.detail == (
            "return window of 14 days over: held for review (purchase_burst: 5 purchases under 10.00 EUR at merchant "
            "m-kiosk within 60 minutes, 2026-12-01 10:00 UTC to 2026-12-01 10:40 UTC; rule: 5 or more)"
        )
    assert account.balances() == totals(lifetime=125, held=125)


@pytest.mark.parametrize(
    ("purchases", "amount", "minutes", "merchants"),
    [
        (4, 500, 10, ("m-kiosk",)),  # one too few
        (5, 1_000, 10, ("m-kiosk",)),  # 10.00 is not under 10.00
        (5, 500, 15, ("m-kiosk",)),  # 60 minutes hold 4 of them (0, 15, 30, 45), never 5
        (10, 500, 5, ("m-kiosk", "m-bakery")),  # 5 each, but at two merchants: 10 minutes apart at each, 5 in 50 minutes...
    ],
    ids=["four", "not-small", "spread", "two-merchants"],
)
def test_purchases_that_are_no_burst_become_available(
    purchases: int, amount: int, minutes: int, merchants: tuple[str, ...]
) -> None:
    account = burst_account(purchases, amount, minutes, merchants)
    held = [e for e in account.entries if e.credit_book == "HELD"]
    if merchants == ("m-kiosk", "m-bakery"):  # ...which is a burst at each: the rule is per merchant, not per account
        assert {e.merchant_id for e in held} == {"m-kiosk", "m-bakery"} and len(held) == 10
        return
    assert not held
    assert len([e for e in account.entries if e.entry_kind == "MADE_AVAILABLE"]) == purchases


def test_purchases_at_two_merchants_do_not_add_up() -> None:
    account = burst_account(8, minutes=5, merchants=("m-kiosk", "m-bakery"))  # 4 at each
    assert not [e for e in account.entries if e.credit_book == "HELD"]


def test_a_burst_completed_by_a_late_authorisation_flags_every_purchase_of_it() -> None:
    account = Account(book(offer(pending_days=14, mccs=[])))
    for n in (0, 1, 3, 4):
        account.purchase(f"b{n}", 500, T0 + timedelta(minutes=10 * n), merchant="m-kiosk")
    account.purchase("b2", 500, T0 + timedelta(minutes=20), merchant="m-kiosk")  # read last, in the middle of the others
    account.pass_time(T0 + timedelta(days=30))
    assert sorted(e.purchase_ref for e in account.entries if e.credit_book == "HELD") == ["b0", "b1", "b2", "b3", "b4"]


def test_without_a_return_window_what_was_spendable_before_the_burst_stays_so() -> None:
    account = Account(book(offer(pending_days=0, mccs=[])))
    for n in range(6):
        account.purchase(f"b{n}", 500, T0 + timedelta(minutes=n), merchant="m-kiosk")
    assert [account.of(f"b{n}")[-1].credit_book for n in range(6)] == ["AVAILABLE"] * 4 + ["HELD"] * 2
    assert account.balances() == totals(lifetime=150, available=100, held=50)


def test_no_rules_hold_nothing() -> None:
    account = Account(book(offer(pending_days=14, mccs=[])), rules=NO_RULES)
    for n in range(6):
        account.purchase(f"b{n}", 500, T0 + timedelta(minutes=n), merchant="m-kiosk")
    account.pass_time(T0 + timedelta(days=30))
    assert not [e for e in account.entries if e.credit_book == "HELD"]
    assert account.replay.states[ACCOUNT].watch is None


# --- review: release and forfeit ------------------------------------------------------------------


def held_burst() -> Account:
    account = burst_account(5)
    assert account.balances()["held_minor"] == 125
    return account


def test_a_release_makes_the_held_reward_available_once() -> None:
    account = held_burst()
    at = T0 + timedelta(days=31)
    assert account.review(instructions.RELEASE, "b0", at) is Outcome.HOLD_RELEASED
    (released,) = account.of("b0", "HOLD_RELEASED")
    assert (released.debit_book, released.credit_book, released.amount_minor) == ("HELD", "AVAILABLE", 25)
    assert released.explanation.reason == PURCHASE_BURST
    assert released.explanation.detail == "released after review by ops-anna: receipts checked"
    assert account.balances() == totals(lifetime=125, held=100, available=25)
    # a repeated release (another instruction, a retried request) finds nothing held: no second movement
    assert account.review(instructions.RELEASE, "b0", at + timedelta(minutes=1)) is Outcome.NO_CHANGE
    assert account.review(instructions.FORFEIT, "b0", at + timedelta(minutes=2)) is Outcome.NO_CHANGE
    assert len(account.of("b0", "HOLD_RELEASED")) == 1 and not account.of("b0", "HOLD_FORFEITED")
    assert account.balances() == totals(lifetime=125, held=100, available=25)
    # the state knows: a later refund of the released purchase claws back from AVAILABLE
    account.refund("b0", 500, at + timedelta(days=1))
    assert [(e.debit_book, e.amount_minor) for e in account.of("b0", "CLAWED_BACK")] == [("AVAILABLE", 25)]


def test_a_forfeit_takes_the_held_reward_back_and_a_later_refund_takes_nothing_more() -> None:
    account = held_burst()
    at = T0 + timedelta(days=31)
    assert account.review(instructions.FORFEIT, "b1", at) is Outcome.HOLD_FORFEITED
    (forfeited,) = account.of("b1", "HOLD_FORFEITED")
    assert (forfeited.debit_book, forfeited.credit_book, forfeited.amount_minor) == ("HELD", "EXPENSE", 25)
    assert forfeited.explanation.detail == "forfeited after review by ops-anna: receipts checked"
    assert account.balances() == totals(lifetime=125, held=100, clawed=25)
    assert account.refund("b1", 500, at + timedelta(days=1)) is Outcome.NO_CHANGE
    assert not account.of("b1", "CLAWED_BACK")
    assert account.review(instructions.RELEASE, "b1", at) is Outcome.NO_CHANGE


def test_a_forfeit_gives_the_campaign_budget_back() -> None:
    offers = book(offer(pending_days=14, mccs=[], budget_minor=1_000, currency="EUR"))
    account = Account(offers)
    for n in range(5):
        account.purchase(f"b{n}", 500, T0 + timedelta(minutes=n), merchant="m-kiosk")
    account.pass_time(T0 + timedelta(days=30))
    assert account.replay.budget_used["grocery-5"] == 125
    account.review(instructions.FORFEIT, "b0", T0 + timedelta(days=31))
    assert account.replay.budget_used["grocery-5"] == 100


def test_a_refund_of_a_held_reward_claws_back_from_held() -> None:
    account = held_burst()
    account.refund("b2", 200, T0 + timedelta(days=31))  # 2.00 of 5.00: 0.10 of its 0.25
    assert [(e.debit_book, e.credit_book, e.amount_minor) for e in account.of("b2", "CLAWED_BACK")] == [("HELD", "EXPENSE", 10)]
    assert account.balances() == totals(lifetime=125, held=115, clawed=10)


def test_a_review_names_one_offers_share_or_every_one() -> None:
    offers = book(
        offer(pending_days=14, mccs=[]), offer(offer_id="everyday-1", rate_bps=100, mccs=[], stackable=True, pending_days=14)
    )
    account = Account(offers)
    for n in range(5):
        account.purchase(f"b{n}", 500, T0 + timedelta(minutes=n), merchant="m-kiosk")
    account.pass_time(T0 + timedelta(days=30))
    account.review(instructions.RELEASE, "b0", T0 + timedelta(days=31), offer_id="everyday-1")
    assert [(e.offer_id, e.amount_minor) for e in account.of("b0", "HOLD_RELEASED")] == [("everyday-1", 5)]
    account.review(instructions.RELEASE, "b0", T0 + timedelta(days=31))
    assert [(e.offer_id, e.amount_minor) for e in account.of("b0", "HOLD_RELEASED")] == [("everyday-1", 5), ("grocery-5", 25)]


def test_a_released_purchase_is_never_held_again() -> None:
    account = Account(book(offer(pending_days=14, mccs=[])))
    for n in range(5):
        account.send(
            card_event(
                "AUTHORIZATION", 900, transaction_ref=f"b{n}", occurred_at=T0 + timedelta(minutes=n), merchant_id="m-kiosk"
            )
        )
    first = T0 + timedelta(hours=2)
    account.send(card_event("CLEARING", 500, transaction_ref="b0", occurred_at=first, clearing_sequence=1, clearing_count=2))
    account.pass_time(first + timedelta(days=15))
    assert account.of("b0", "HELD")
    account.review(instructions.RELEASE, "b0", first + timedelta(days=16))
    second = first + timedelta(days=17)
    account.send(card_event("CLEARING", 400, transaction_ref="b0", occurred_at=second, clearing_sequence=2, clearing_count=2))
    account.pass_time(second + timedelta(days=15))
    assert [e.credit_book for e in account.of("b0") if e.debit_book == "CONFIRMED"] == ["HELD", "AVAILABLE"]


def test_a_review_of_an_unknown_purchase_changes_nothing() -> None:
    account = held_burst()
    assert account.review(instructions.RELEASE, "nope", T0 + timedelta(days=31)) is Outcome.UNKNOWN_TRANSACTION


# --- a merchant flagged across accounts -----------------------------------------------------------


def test_a_merchant_flag_holds_its_purchases_waiting_and_those_until_it_ends() -> None:
    account = Account(book(offer(pending_days=14, mccs=[])))
    account.purchase("before", 50_000, T0, merchant="m-shady")
    account.purchase("elsewhere", 50_000, T0, merchant="m-grocer")
    flagged_at = T0 + timedelta(days=2)
    detail = "merchant m-shady paid 250.00 EUR of rewards to 2 accounts in the 7 days to 2026-12-03 10:00 UTC; rule: ..."
    outcome = account.instruct(
        instructions.merchant_hold(7, ACCOUNT, "m-shady", "EUR", flagged_at + timedelta(days=30), detail, flagged_at)
    )
    assert outcome is Outcome.FLAGGED
    account.purchase("during", 50_000, T0 + timedelta(days=3), merchant="m-shady")
    account.purchase("after", 50_000, T0 + timedelta(days=33), merchant="m-shady")
    account.pass_time(T0 + timedelta(days=60))
    for ref in ("before", "during"):
        (held,) = account.of(ref, "HELD")
        assert held.explanation.reason == MERCHANT_CONCENTRATION
        assert held.explanation.detail == f"return window of 14 days over: held for review (merchant_concentration: {detail})"
    assert account.of("elsewhere", "MADE_AVAILABLE") and account.of("after", "MADE_AVAILABLE")


# --- instructions as events -----------------------------------------------------------------------


def test_an_instruction_is_validated_like_a_card_event() -> None:
    record = instructions.review(instructions.RELEASE, ACCOUNT, "txn-1", None, "EUR", "ops-anna", "ok", T0)
    assert validate(record) is None
    event = to_event(record)
    assert event.event_type is EventType.RELEASE_HOLD and event.transaction_ref == "txn-1"
    assert event.note is not None and (event.note.actor, event.note.reason) == ("ops-anna", "ok")
    card = dict(record, reason="customer's card 4111 1111 1111 1111 was stolen")
    assert validate(card) is not None and validate(card).reason is RejectReason.CARD_NUMBER_DETECTED  # type: ignore[union-attr]
    assert validate(dict(record, transaction_ref=None)).field == "transaction_ref"  # type: ignore[union-attr]
    assert validate(dict(record, reason="x" * 501)).reason is RejectReason.INVALID_FIELD  # type: ignore[union-attr]
    assert validate(dict(record, reason="x" * 500, actor="y" * 500)) is None  # people's free text: up to 500
    assert validate(dict(record, transaction_ref="t" * 257)).field == "transaction_ref"  # type: ignore[union-attr]
    flag = instructions.merchant_hold(1, ACCOUNT, "m-1", "PTS", T0, "why", T0)
    assert validate(flag) is None and validate(dict(flag, until=None)).field == "until"  # type: ignore[union-attr]


def test_card_events_keep_the_fingerprints_their_accounts_hold() -> None:
    """Events decided before instructions existed are recognised when redelivered."""
    assert (
        card_event("CLEARING", 1234, event_id="fp-1", clearing_sequence=1, clearing_count=2).fingerprint()
        == "3a0cb02de91ca095e4ee376c"
    )
    assert card_event("AUTHORIZATION", 10_000, event_id="fp-2").fingerprint() == "3491e6ddf2037c36df5d909d"


# --- what the account remembers -------------------------------------------------------------------


def test_the_watch_is_stored_and_read_back_and_an_old_state_reads_without_one() -> None:
    account = loop_account(refunded=3)
    state = account.replay.states[ACCOUNT]
    assert state.watch is not None and len(state.watch.refunds) == 3
    summary = split(ACCOUNT, None, state, before_in_rows=True).summary
    read = assemble(ACCOUNT, decode_summary(encode(summary)), {}.get)
    assert read == state
    summary.watch = None  # as an earlier version stored it
    assert assemble(ACCOUNT, decode_summary(encode(summary)), {}.get).watch is None  # type: ignore[union-attr]


def test_what_the_account_remembers_is_bounded() -> None:
    account = Account(book(offer(pending_days=14, mccs=[])))
    for n in range(100):
        at = T0 + timedelta(hours=n)
        account.purchase(f"p{n}", 10_000, at)
        account.refund(f"p{n}", 100, at + timedelta(minutes=30))
    watch = account.replay.states[ACCOUNT].watch
    assert watch is not None and len(watch.refunds) == KEPT_REFUNDS
    step = AccountStep(card_event(), account.replay.states[ACCOUNT], book(), None, {})  # type: ignore[arg-type]
    assert remembered(step, int((T0 + timedelta(days=365)).timestamp() * 1000)) is None  # all of it older than two windows


def test_decide_takes_the_rules_as_an_argument() -> None:
    events = [card_event("AUTHORIZATION", 500, transaction_ref=f"b{n}", merchant_id="m-kiosk") for n in range(5)]
    state = None
    for event in events:
        state = decide(event, book(), state, abuse=NO_RULES).state
    assert state is not None and all(t.hold is None for t in state.txns.values())
    state = None
    for event in events:
        state = decide(event, book(), state).state  # the process's: the defaults
    assert state is not None and all(t.hold is not None and t.hold.rule == PURCHASE_BURST for t in state.txns.values())


# --- the simulator's bursts, and the metrics' labels ---------------------------------------------


def test_the_simulators_bursts_are_held_and_leave_the_rest_of_the_stream_alone() -> None:
    from datetime import timedelta as days

    from stream.backtest import replay
    from stream.composition import read_offers
    from stream.simulate import Scenario, generate

    offers = OfferBook.of(read_offers(REPO_ROOT / "deploy" / "offers" / "example.yaml"))
    scenario = Scenario(seed=3, purchases=1_000, bad_ratio=0)
    held = replay(generate(scenario), offers, scenario.start + days(days=60), abuse=DEFAULT_RULES)
    rules = {e.explanation.reason for e in held.entries.values() if e.credit_book == "HELD"}
    assert PURCHASE_BURST in rules
    with_bursts = [m.record for m in generate(scenario) if not str(m.record.get("transaction_ref", "")).startswith("burst-")]
    assert with_bursts == [m.record for m in generate(Scenario(seed=3, purchases=1_000, bad_ratio=0, burst_every=0))]


def test_the_hold_metrics_have_a_closed_set_of_labels() -> None:
    from prometheus_client import REGISTRY

    from stream.sink import count_holds

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = (
        sample("cashback_holds_total", rule="refund_loop"),
        sample("cashback_holds_total", rule="other"),
        sample("cashback_hold_reviews_total", rule="purchase_burst", decision="forfeited"),
    )
    count_holds(["HELD:refund_loop", "RECREDITED:acct-42 typed by hand", "HOLD_FORFEITED:purchase_burst"])
    after = (
        sample("cashback_holds_total", rule="refund_loop"),
        sample("cashback_holds_total", rule="other"),
        sample("cashback_hold_reviews_total", rule="purchase_burst", decision="forfeited"),
    )
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]
