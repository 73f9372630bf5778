"""Property tests of the rules engine over random event sequences of one account: ledger invariants and idempotency."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.core.abuse import AbuseRules, PurchaseBurst, RefundLoop
from stream.core.balances import BALANCE_FIELDS, balances
from stream.core.entries import moves_money
from stream.core.events import CardEvent, to_event, validate
from stream.core.lifecycle import _internal_event
from stream.core.memory import RECENT_EVENTS_LIMIT
from stream.core.offers import OfferBook
from stream.core.rules import AccountProfile, decide
from stream.core.state import AccountState
from stream.core.state_rows import assemble, decode_summary, encode
from stream.core.state_writes import split
from tests.factories import T0, book, card_record, offer

# Seeded: every run tries the same examples, so a failure replays. Moderate counts keep the suite fast.
SEEDED = settings(
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

REFS = ("txn-1", "txn-2", "txn-3")
EVENT_TYPES = (
    "AUTHORIZATION",
    "INCREMENTAL_AUTHORIZATION",
    "AUTHORIZATION_REVERSAL",
    "AUTHORIZATION_EXPIRY",
    "CLEARING",
    "REFUND",
    "CHARGEBACK",
    "CHARGEBACK_REVERSAL",
)
BOOKS = {"NONE", "EXPENSE", "PENDING", "CONFIRMED", "AVAILABLE", "HELD", "DONATED"}  # DONATED: once time passes

OFFER_BOOKS = {
    "grocery-5": book(),
    "no-return-window": book(offer(pending_days=0)),
    "capped-and-stacked": book(
        offer(max_reward_per_txn_minor=300),
        offer(offer_id="everyday-1", rate_bps=100, mccs=[], stackable=True, rounding="half_up"),
    ),
    "accrue-on-clearing": book(offer(accrue_on="CLEARING", min_spend_minor=500)),
    # offer v2 terms: caps per period, boost, tiers, budgets, points, fixed rewards, schedules
    "capped-boosted-tiered": book(
        offer(
            rate_bps=200,
            boost={"threshold_minor": 20_000, "rate_bps": 500},
            tiers=[{"segment": "vip", "rate_bps": 300}],
            cap={"period": "week", "amount_minor": 600},
            currency="EUR",
        ),
        offer(
            offer_id="points-2",
            reward_kind="POINTS",
            rate_bps=None,
            points_per_unit=2,
            currency="EUR",
            mccs=[],
            cap={"period": "day", "amount_minor": 300},
            stackable=True,
        ),
    ),
    "budgeted": book(
        offer(
            budget_minor=900,
            currency="EUR",
            rounding="half_up",
            max_reward_per_txn_minor=700,
            cap={"period": "month", "amount_minor": 800},
        ),
        offer(
            offer_id="credit-fixed",
            reward_kind="STORE_CREDIT",
            rate_bps=None,
            fixed_reward_minor=150,
            currency="EUR",
            budget_minor=300,
            stackable=True,
            pending_days=0,
        ),
        offer(
            offer_id="give-1",
            reward_kind="CHARITY",
            charity_id="red-cross",
            rate_bps=100,
            mccs=[],
            budget_minor=50,
            currency="EUR",
            stackable=True,
            accrue_on="CLEARING",
        ),
    ),
    "one-capped-budgeted": book(offer(budget_minor=700, currency="EUR", cap={"period": "day", "amount_minor": 400})),
    # holdout groups: acct-1 is held out of g1 (its bucket 4016 < 5000), not of grocery-5 (6959);
    # everyday-1 pays what is left (stream.core.holdout)
    "held-out": book(
        offer(offer_id="g1", rate_bps=800, holdout_bps=5_000, budget_minor=900, currency="EUR", min_spend_minor=1_000),
        offer(holdout_bps=5_000, cap={"period": "day", "amount_minor": 400}, currency="EUR"),
        offer(offer_id="everyday-1", rate_bps=100, mccs=[], min_spend_minor=2_000),
    ),
    "scheduled": book(
        offer(days_of_week=["TUE", "WED", "SAT"], hours={"from": "08:00", "to": "20:00"}, requires_activation=True),
        offer(
            offer_id="vip-only",
            rate_bps=700,
            mccs=[],
            segments=["vip"],
            budget_minor=1_000,
            currency="EUR",
            hours={"from": "22:00", "to": "06:00"},
        ),
    ),
}
# Who the account is: in the vip segment, the grocery offer activated a few minutes after T0.
PROFILE = AccountProfile(frozenset({"vip"}), {"grocery-5": T0 + timedelta(minutes=4)})
ZONES = ("Europe/Paris", "Europe/Paris", "America/New_York", "Asia/Tokyo", None, "Not/A_Zone")


@st.composite
def event_sequences(draw: st.DrawFn, multi_clearing: bool = False) -> list[CardEvent]:
    """Events of one account over a few transaction refs, some repeated exactly, some reusing an id."""
    events: list[CardEvent] = []
    for index in range(draw(st.integers(1, 25))):
        roll = draw(st.integers(0, 9))
        if roll == 0 and events:  # an exact repeat of an earlier message
            events.append(draw(st.sampled_from(events)))
            continue
        event_type = draw(st.sampled_from(EVENT_TYPES))
        ref = draw(st.sampled_from(REFS))
        amount = draw(st.one_of(st.integers(0, 100), st.integers(0, 50_000)))
        record = card_record(
            event_type,
            amount,
            event_id=f"evt-{index}",
            # mostly in order, minutes apart; sometimes days later (other cap periods) or earlier
            occurred_at=T0 + timedelta(minutes=index, hours=draw(st.sampled_from((0, 0, 0, 5, 30, 200, 900)))),
            merchant_timezone=draw(st.sampled_from(ZONES)),
            mcc=draw(st.sampled_from(("5411", "5411", "5812", "6011"))),
            response_code=draw(st.sampled_from(("00", "00", "00", "05"))),
            cashback_at_pos_minor=draw(st.integers(0, amount)) if draw(st.integers(0, 4)) == 0 else 0,
        )
        if event_type in ("REFUND", "CHARGEBACK", "CHARGEBACK_REVERSAL"):
            record.update(
                transaction_ref=f"{ref}-{event_type.lower()}-{index}",
                original_transaction_ref=ref,
                processing_code="REFUND" if event_type == "REFUND" else "PURCHASE",
                cashback_at_pos_minor=0,
            )
        else:
            record["transaction_ref"] = ref
        if event_type == "CLEARING" and multi_clearing and draw(st.booleans()):
            count = draw(st.integers(2, 3))
            record.update(clearing_sequence=draw(st.integers(1, count)), clearing_count=count)
        if roll == 1 and events:  # the id of an earlier message with other content: a conflict
            record["event_id"] = draw(st.sampled_from(events)).event_id
        assert validate(record) is None
        events.append(to_event(record))
    return events


def run(
    events: list[CardEvent], offers: OfferBook, stored_state: bool = False, abuse: AbuseRules | None = None
) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Decide every event in order, with the true remaining budget of every budgeted offer; return
    (balances after it, its entries) per event. Asserts after every event that no budget is
    overspent and no cap period holds more than its cap."""
    state: AccountState | None = None
    steps = []
    rows: dict[str, dict[str, Any]] = {}  # the ledger: a re-emitted accrual id writes nothing
    budgets = {o.offer_id: o.budget_minor for o in offers.offers if o.budget_minor is not None}
    spent = dict.fromkeys(budgets, 0)
    for event in events:
        if stored_state and state is not None:  # the worker's table stores the state encoded
            state = as_stored(state)
        remaining = {offer_id: budgets[offer_id] - spent[offer_id] for offer_id in budgets}
        decision = decide(event, offers, state, PROFILE, remaining, abuse=abuse)
        state = decision.state
        for offer_id, delta in decision.budget_deltas.items():
            assert delta != 0 and offer_id in budgets, decision.budget_deltas
            spent[offer_id] += delta
            assert 0 <= spent[offer_id] <= budgets[offer_id], (offer_id, spent[offer_id])
        for offer_id, usage in state.caps.items():
            cap = offers.get(offer_id).cap  # type: ignore[union-attr]
            assert cap is not None and all(0 < held <= cap.amount_minor for held in usage.values()), (offer_id, usage)
        for entry in decision.entries:
            rows.setdefault(entry.accrual_id, entry)
        for offer_id in budgets:  # what the budget counts is what the offer's entries cost net
            expense = sum(
                e.amount_minor * ((e.debit_book == "EXPENSE") - (e.credit_book == "EXPENSE"))
                for e in rows.values()
                if e.offer_id == offer_id
            )
            assert expense == spent[offer_id], (offer_id, expense, spent[offer_id])
        totals = balances(rows.values())
        assert state.wallet == wallet_of(totals), (state.wallet, totals)  # the wallet is the AVAILABLE the entries imply
        steps.append((totals, list(decision.entries)))
    return steps


def wallet_of(totals: dict[tuple[str, str, str], dict[str, int]]) -> dict[str, int]:
    """The wallet (``AccountState.wallet``) the ledger's balances imply: AVAILABLE per "<kind>:<unit>", none at 0."""
    return {f"{kind}:{unit}": t["available_minor"] for (_, kind, unit), t in totals.items() if t["available_minor"]}


def ledger(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What the ledger keeps: one row per accrual id. The same id must always carry the same entry."""
    rows: dict[str, dict[str, Any]] = {}
    for entry in entries:
        previous = rows.setdefault(entry.accrual_id, entry)
        assert previous == entry, f"accrual id {entry['accrual_id']} re-emitted with other content"
    return rows


def entries_of(steps: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    return [entry for _, entries in steps for entry in entries]


def check_invariants(events: list[CardEvent], offers: OfferBook, abuse: AbuseRules | None = None) -> None:
    steps = run(events, offers, abuse=abuse)
    for entry in entries_of(steps):
        assert entry.debit_book in BOOKS and entry.credit_book in BOOKS
        if not moves_money(entry.entry_kind):
            assert entry.amount_minor == 0
            assert entry.debit_book == entry.credit_book == "NONE"
        else:
            assert entry.amount_minor > 0, entry
            assert entry.debit_book != entry.credit_book, entry
            assert "NONE" not in (entry.debit_book, entry.credit_book), entry
    for totals, _ in steps:  # after every event, not only at the end
        for key, balance in totals.items():
            assert balance["pending_minor"] >= 0, (key, balance)
            assert balance["confirmed_minor"] >= 0, (key, balance)
            assert balance["clawed_back_minor"] <= balance["lifetime_earned_minor"], (key, balance)
            assert balance["held_minor"] >= 0, (key, balance)


OFFER_NAMES = st.sampled_from(sorted(OFFER_BOOKS))


@SEEDED
@given(offers_name=OFFER_NAMES, events=event_sequences())
def test_ledger_invariants(offers_name: str, events: list[CardEvent]) -> None:
    check_invariants(events, OFFER_BOOKS[offers_name])


@SEEDED
@given(offers_name=OFFER_NAMES, events=event_sequences(multi_clearing=True), data=st.data())
def test_redelivery_gives_the_same_ledger(offers_name: str, events: list[CardEvent], data: st.DataObject) -> None:
    offers = OFFER_BOOKS[offers_name]
    once = ledger(entries_of(run(events, offers)))

    twice = ledger(entries_of(run([e for event in events for e in (event, event)], offers)))
    assert twice == once

    # a consumer that rewinds: processes up to an offset, restarts from an earlier one
    stop = data.draw(st.integers(0, len(events)))
    restart = data.draw(st.integers(0, stop))
    rewound = ledger(entries_of(run(events[:stop] + events[restart:], offers)))
    assert rewound == once


@SEEDED
@given(offers_name=OFFER_NAMES, events=event_sequences(multi_clearing=True))
def test_state_survives_being_stored_and_read_back(offers_name: str, events: list[CardEvent]) -> None:
    offers = OFFER_BOOKS[offers_name]
    assert run(events, offers, stored_state=True) == run(events, offers)


def as_stored(state: AccountState) -> AccountState:
    """``state`` written as the worker's table stores it (a summary carrying every row, encoded)
    and read back."""
    summary = split("acct-1", None, state, before_in_rows=True).summary
    read = assemble("acct-1", decode_summary(encode(summary)), {}.get)
    assert read is not None
    return read


@SEEDED
@given(events=event_sequences())
def test_exact_repeats_emit_the_same_accrual_ids(events: list[CardEvent]) -> None:
    steps = run(events, OFFER_BOOKS["grocery-5"])
    ids_by_content: dict[tuple[str, str], list[str]] = {}
    for event, (_, entries) in zip(events, steps, strict=True):
        ids = [entry.accrual_id for entry in entries]
        assert all(i.startswith(f"{event.event_id}#") for i in ids)
        first = ids_by_content.setdefault((event.event_id, event.fingerprint()), ids)
        assert ids in (first, [])  # a repeat re-emits its entries; a conflict emits nothing
    ledger(entries_of(steps))  # asserts no accrual id ever carries two different entries


@st.composite
def multi_clearing_lifecycles(draw: st.DrawFn) -> list[CardEvent]:
    """One purchase cleared in parts with refunds between the parts, then a chargeback."""
    amounts = st.one_of(st.integers(1, 100), st.integers(1_000, 20_000))
    records = [card_record("AUTHORIZATION", draw(amounts))]
    parts = draw(st.integers(2, 3))
    for sequence in range(1, parts + 1):
        records.append(card_record("CLEARING", draw(amounts), clearing_sequence=sequence, clearing_count=parts))
        for _ in range(draw(st.integers(0, 2))):
            records.append(card_record("REFUND", draw(amounts), processing_code="REFUND"))
    records.append(card_record("CHARGEBACK", draw(amounts)))
    events = []
    for index, record in enumerate(records):
        record.update(event_id=f"evt-{index}", occurred_at=T0 + timedelta(minutes=index))
        if record["event_type"] in ("REFUND", "CHARGEBACK"):
            record.update(transaction_ref=f"after-{index}", original_transaction_ref="txn-1")
        events.append(to_event(record))
    return events


@SEEDED
@given(events=multi_clearing_lifecycles())
def test_ledger_invariants_with_refunds_between_clearing_parts(events: list[CardEvent]) -> None:
    # The capped offer makes a later part earn less than its share, which is what exposes the bug
    # (about one example in ten; with the plain 5% offer, only rounding does, about one in seventy).
    check_invariants(events, OFFER_BOOKS["capped-and-stacked"])


# --- redelivery at any distance (issue: the engine once remembered only its last 200 events) ------


def state_balances(state: AccountState) -> dict[tuple[str, str], dict[str, int]]:
    """The balances the engine's own state holds, per (reward kind, unit): what its shares hold."""
    result: dict[tuple[str, str], dict[str, int]] = {}
    for txn in state.txns.values():
        for share in txn.shares:
            totals = result.setdefault((share.reward_kind, share.currency), dict.fromkeys(BALANCE_FIELDS, 0))
            totals["pending_minor"] += share.pending
            totals["confirmed_minor"] += share.confirmed
            totals["donated_minor" if share.reward_kind == "CHARITY" else "available_minor"] += share.available
            totals["lifetime_earned_minor"] += share.earned
            totals["clawed_back_minor"] += share.clawed_back
            totals["held_minor"] += share.held
    return {key: totals for key, totals in result.items() if any(totals.values())}


def ledger_balances(rows: dict[str, dict[str, Any]]) -> dict[tuple[str, str], dict[str, int]]:
    return {(kind, unit): totals for (_, kind, unit), totals in balances(rows.values()).items() if any(totals.values())}


def fillers(count: int, start: int) -> list[CardEvent]:
    """Purchases that earn nothing (a restaurant, no offer for it), each on its own transaction."""
    return [
        to_event(
            card_record(
                "AUTHORIZATION",
                1_000,
                event_id=f"filler-{start + n}",
                transaction_ref=f"filler-{start + n}",
                mcc="4121",
                occurred_at=T0 + timedelta(minutes=30 + start + n),
            )
        )
        for n in range(count)
    ]


@SEEDED
@given(offers_name=OFFER_NAMES, events=event_sequences(multi_clearing=True), data=st.data())
def test_a_redelivery_at_any_distance_changes_nothing(offers_name: str, events: list[CardEvent], data: st.DataObject) -> None:
    """Any interleaving of the account's events with redeliveries of earlier ones, near or far
    beyond the recent-events window: the ledger is the one without redeliveries, and it equals
    the balances the engine's state holds."""
    offers = OFFER_BOOKS[offers_name]
    sequence: list[CardEvent] = []  # the account's events, each once, with purchases in between
    delivered: list[CardEvent] = []  # the same, with redeliveries of earlier ones
    for index, event in enumerate(events):
        extra = [event]
        if data.draw(st.integers(0, 3)) == 0:
            extra += fillers(data.draw(st.sampled_from((1, 10, RECENT_EVENTS_LIMIT + 5))), start=100 * index)
        sequence += extra
        delivered += extra
        if data.draw(st.integers(0, 2)) == 0:
            delivered.append(data.draw(st.sampled_from(delivered)))
    once = ledger(entries_of(run(sequence, offers)))
    state: dict[str, Any] | None = None
    rows: dict[str, dict[str, Any]] = {}
    for event in delivered:
        remaining = {
            o.offer_id: o.budget_minor
            - sum(  # the budget as the ledger shows it spent
                r.amount_minor * ((r.debit_book == "EXPENSE") - (r.credit_book == "EXPENSE"))
                for r in rows.values()
                if r.offer_id == o.offer_id
            )
            for o in offers.offers
            if o.budget_minor is not None
        }
        decision = decide(event, offers, state, PROFILE, remaining)
        state = decision.state
        for entry in decision.entries:
            assert rows.setdefault(entry.accrual_id, entry) == entry, "an accrual id with two contents"
    assert rows == once, (
        [(e.event_id, e.event_type.value, e.transaction_ref) for e in delivered if not e.event_id.startswith("filler")],
        {k: v.entry_kind for k, v in rows.items() if once.get(k) != v},
        {k: v.entry_kind for k, v in once.items() if rows.get(k) != v},
    )
    assert state is not None and state_balances(state) == ledger_balances(rows)


# --- abuse controls: holds, and their review (stream.core.holds) ----------------------------------

# Rules that fire often on these short sequences: two refunded purchases make a loop, two purchases
# under 500.00 at one merchant within a day a burst.
TRIGGER_HAPPY = AbuseRules(
    refund_loop=RefundLoop(min_refunds=2, window_days=30),
    purchase_burst=PurchaseBurst(min_purchases=2, window_minutes=1_440, below_minor={"EUR": 50_000}),
)


@st.composite
def reviewed_sequences(draw: st.DrawFn) -> list[CardEvent]:
    """Event sequences with releases and forfeits of the purchases' holds among them (some
    repeated), and time passing (the end of every return window) somewhere."""
    base = []  # purchases of every ref first, so that rewards exist to hold (a burst, from the second)
    for ref in REFS:
        amount = draw(st.integers(100, 20_000))
        for kind in ("AUTHORIZATION", "CLEARING")[: draw(st.integers(1, 2))]:
            base.append(to_event(card_record(kind, amount, event_id=f"base-{ref}-{kind}", transaction_ref=ref, occurred_at=T0)))
    events = base + draw(event_sequences(multi_clearing=True))
    out: list[CardEvent] = []
    for index, event in enumerate(events):
        out.append(event)
        for n in range(draw(st.integers(0, 2)) if draw(st.integers(0, 2)) == 0 else 0):
            kind = draw(st.sampled_from(("RELEASE_HOLD", "FORFEIT_HOLD")))
            record = {
                "event_id": f"review-{index}-{n}",
                "instruction": kind,
                "occurred_at": event.occurred_at + timedelta(days=draw(st.sampled_from((0, 20, 40)))),
                "account_id": "acct-1",
                "transaction_ref": draw(st.sampled_from(REFS)),
                "offer_id": draw(st.sampled_from((None, None, "grocery-5", "everyday-1"))),
                "merchant_id": None,
                "until": None,
                "currency": "EUR",
                "actor": "ops",
                "reason": "reviewed",
            }
            assert validate(record) is None
            out.append(to_event(record))
        if draw(st.integers(0, 5)) == 0:  # time passes: the return windows ended by then end (as a clock tick would say)
            at = int((event.occurred_at + timedelta(days=draw(st.sampled_from((1, 31, 61))))).timestamp() * 1000)
            out += [_internal_event("RETURN_WINDOW_ENDED", "acct-1", ref, at, "EUR") for ref in REFS]
    return out


REVIEWED_BOOKS = st.sampled_from(["grocery-5", "no-return-window", "capped-and-stacked", "budgeted"])


@SEEDED
@given(offers_name=REVIEWED_BOOKS, events=reviewed_sequences())
def test_ledger_invariants_with_holds_and_reviews(offers_name: str, events: list[CardEvent]) -> None:
    check_invariants(events, OFFER_BOOKS[offers_name], abuse=TRIGGER_HAPPY)


@SEEDED
@given(offers_name=REVIEWED_BOOKS, events=reviewed_sequences(), data=st.data())
def test_holds_and_reviews_redelivered_give_the_same_ledger_and_the_state_agrees(
    offers_name: str, events: list[CardEvent], data: st.DataObject
) -> None:
    offers = OFFER_BOOKS[offers_name]
    once = ledger(entries_of(run(events, offers, abuse=TRIGGER_HAPPY)))
    delivered = [e for event in events for e in ((event, event) if data.draw(st.booleans()) else (event,))]
    assert ledger(entries_of(run(delivered, offers, abuse=TRIGGER_HAPPY))) == once
    assert run(events, offers, stored_state=True, abuse=TRIGGER_HAPPY) == run(events, offers, abuse=TRIGGER_HAPPY)
    if any(o.budget_minor is not None for o in offers.offers):
        return  # the state's balances are compared below without budgets to coordinate
    state = None
    for event in delivered:
        state = decide(event, offers, state, PROFILE, abuse=TRIGGER_HAPPY).state
    assert state is not None and state_balances(state) == ledger_balances(once)


def test_the_trigger_happy_rules_do_hold_and_review() -> None:
    """The properties above are not vacuous: such sequences hold rewards, and a review moves them."""
    events = []
    for n, ref in enumerate(REFS):
        events.append(to_event(card_record("AUTHORIZATION", 10_000, event_id=f"a{n}", transaction_ref=ref)))
        events.append(to_event(card_record("CLEARING", 10_000, event_id=f"c{n}", transaction_ref=ref)))
    review = {
        "event_id": "review-1",
        "instruction": "FORFEIT_HOLD",
        "occurred_at": T0 + timedelta(days=1),
        "account_id": "acct-1",
        "transaction_ref": "txn-3",  # txn-1's reward was spendable before the burst was seen: not held
        "offer_id": None,
        "merchant_id": None,
        "until": None,
        "currency": "EUR",
        "actor": "ops",
        "reason": "reviewed",
    }
    events.append(to_event(review))
    kinds = {e.entry_kind for _, entries in run(events, OFFER_BOOKS["no-return-window"], abuse=TRIGGER_HAPPY) for e in entries}
    assert {"HELD", "HOLD_FORFEITED"} <= kinds
