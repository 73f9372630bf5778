"""The rules engine: ``decide(event, offers, state, profile, budget_remaining) -> Decision``.
Pure: no I/O, no clock, no await. A decision is the new state, its ledger entries, the outcome,
the budget deltas and, for a lot's expiry notice, what the customer is to be told
(``Decision.notices``: ``stream.core.notices``).

The same function runs in the matcher agent, the tests' oracle and the back-test. Offer selection
is in ``stream.core.eligibility``, amounts in ``stream.core.rewards``, the working copy of the state
with its caps and budgets in ``stream.core.working_copy``, and one handler per event type in
``stream.core.authorisations`` (the pending side), ``stream.core.clearings`` (confirmed and
available) and ``stream.core.clawbacks`` (refunds and chargebacks); this module applies one event
to one account's state: idempotency, the horizon, the handler, and the new state.

State is one account's ``AccountState`` (``stream.core.state``: typed records; ``decide``
never mutates the state it is given, it returns a new one, sharing the transactions it did not
touch; the worker stores it as a summary and a row per transaction and recent event:
``stream.core.state_rows``). What it derives from the transactions (which event ids they keep,
when they fall due, which the horizon may forget: ``stream.core.account_index``) is kept beside
the state and carried from the state given to the state returned, so an event costs what it
touches, not what the account holds::

    recent:   {event_id: Recent(fingerprint, entries)}  # the last 32 events at most, to re-emit after a crash
    txns:     {transaction_ref: Txn(..., shares=[Share, ..],  # purchases, one share per offer earned,
                                    events={event_id: fingerprint})}  # with every event id of theirs
    loose:    {event_id: Loose(fingerprint, occurred_ms)}  # events with no transaction (a refund of a
                                                           # purchase never seen, a declined authorisation)
    caps:     {limits_key: {period_key: held_minor}}    # cap usage per offer (and currency) and period
    carry:    {"offer_id:UNIT": remainder}              # unpaid fractions, 1/10,000ths of a minor unit
    watch:    Watch(refunds, small, merchants) | None   # what the abuse rules remember (stream.core.holds)
    lots:     [Lot(offer, unit, amount, expires, notice)]  # unused points and store credit that expire (stream.core.expiry)
    due_ms:   epoch_ms | None                           # earliest expiry or end of a return window (stream.core.lifecycle)
    clock_ms: epoch_ms | None                           # the latest event time of the account

**Judged once** (``stream.core.judgement``): a purchase is decided at its authorisation, and its
clearings, refunds and chargebacks follow that decision. **Remembered for the life of a
transaction** (``stream.core.memory``): a redelivered event is recognised at any distance; an event
of a transaction forgotten at the horizon is ``beyond_horizon``, recorded as a NOT_EARNED line
numbered ``<event_id>#beyond_horizon`` (its first entries may be in the ledger); the same event id
with other content is ``duplicate_conflict``.

Every money movement is an entry: ``amount_minor`` moves from ``debit_book`` to ``credit_book``,
so an entry's legs sum to zero by construction (a TigerBeetle-style transfer). Books:

- EXPENSE: the sponsor's cashback expense for the offer (the bank's side);
- PENDING: authorised, not yet settled; CONFIRMED: settled, inside the return window;
- AVAILABLE: the customer can use it; DONATED: a charity reward given to the charity (the
  customer's donated total; ``beneficiary_id`` on the entry names the charity);
- HELD: a reward an abuse rule flagged where it would have become AVAILABLE (or DONATED), until
  operations release or forfeit it (``stream.core.abuse`` the rules, ``stream.core.holds`` what
  they do; the instructions RELEASE_HOLD, FORFEIT_HOLD and HOLD_MERCHANT are decided here like
  card events).

Entries are in the reward's unit and kind: cash, store credit and charity in the billing currency
(a charity entry's ``detail`` ends with ``charity_id=<id>``), points in ``PTS``; they are never
summed across kinds or units.

Entry ids are ``<event_id>#<n>``: a redelivered event is recognised and changes nothing (it
re-emits its entries, same ids, while it is among the recent events), so the ledger's unique key
makes a replay a no-op, and it reports no budget deltas.

**Held amount.** What a share holds is its pending plus its confirmed-and-not-clawed-back reward.
Caps and budgets count held amounts, so pending cashback reserves them (nothing is promised twice)
and every change of a holding moves them by the same amount:

- *Budget* (per offer, all accounts; a money budget per currency, keyed ``<offer_id>@<currency>``
  outside the offer's own currency): ``Decision.budget_deltas[key]`` is what this event
  changed the offer's holdings by: + when pending is created or grows, a clearing confirms more
  than was pending, a chargeback is reversed; - when pending is released or expires and when a
  refund or chargeback claws back. A grant is never more than ``budget_remaining[offer_id]`` (the
  caller's view; an offer absent from the mapping has its whole ``budget_minor``) less what this
  event already used. A purchase that gets nothing because of it records ``budget_exhausted``.
- *Cap* (per account, offer and period, in the merchant's local calendar, ISO weeks): the period
  is the purchase's (its authorisation, or a force post's own time), kept on the share, so a
  refund months later gives headroom back to the period the purchase used. Periods are pruned
  once they ended more than the offer's ``auth_expiry_days`` ago. ``cap_reached`` when nothing is
  left. Caps and budgets also bound a chargeback reversal's recredit.

**Carried remainder** (case 23): the fraction a confirmation leaves unpaid after rounding is kept per
account, offer and unit and added to the next confirmation (recorded as ``carried_remainder`` on
the entry). Pending amounts ignore it (they are provisional); a confirmation cut by a limit (cap,
budget, per-purchase maximum) carries nothing: what a limit cuts is not owed. Clawbacks prorate
what was confirmed and leave the carry alone.

**Stacking**: one offer per purchase, the one that pays most *now* (after its cap and budget;
points count as minor units, no exchange rate is known here; ties: the most recent, then the
first offer id in alphabetical order, whatever order the offers were loaded in), plus every
stackable one. An offer that holds the account out (``stream.core.holdout``) takes no part: the
purchase earns what it would without it, and a NOT_EARNED line with the reason ``holdout`` names it.

**Amounts**: a rate (the best tier the account is in replaces the base rate; a boost rate, when
higher, applies to the whole purchase once its size reaches the threshold: the authorised basis
for pending, the basis cleared so far, this part included, for a confirmation, so parts of a
multi-clearing purchase cleared before the threshold is reached keep the lower rate); a fixed
reward, once per purchase whatever its clearing parts; or whole points per whole currency unit,
always rounded down, the fraction carried like a cash remainder.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import msgspec

from stream.core.abuse import DEFAULT_RULES, AbuseRules
from stream.core.account_index import derive, keep
from stream.core.authorisations import on_authorization, on_expiry, on_incremental, on_reversal
from stream.core.clawbacks import on_chargeback, on_chargeback_reversal, on_refund
from stream.core.clearings import on_clearing, on_return_window_ended
from stream.core.eligibility import NO_PROFILE, AccountProfile
from stream.core.entries import Entry
from stream.core.events import CardEvent, EventType
from stream.core.expiry import on_available_expiry, on_expiry_notice
from stream.core.holds import on_forfeit_hold, on_hold_merchant, on_release_hold, remembered
from stream.core.lifecycle import DAY_MS, with_lots
from stream.core.memory import TRANSACTION_HORIZON_DAYS, known, remember
from stream.core.notices import Notice
from stream.core.offers import OfferBook
from stream.core.outcomes import Outcome
from stream.core.payouts import on_open_wallet, on_payout_result, on_payout_run, paid_again
from stream.core.redemptions import on_redeem
from stream.core.state import AccountState
from stream.core.working_copy import AccountStep, purchase_ref

__all__ = ["AccountProfile", "Decision", "Outcome", "decide", "new_state"]

_NO_DELTAS: Mapping[str, int] = MappingProxyType({})
# A lot's expiry and its notice (stream.core.expiry) are never beyond the horizon: its purchase may be long forgotten.
# Nor are a payout run, a payout's answer, or a wallet's opening (stream.core.payouts), nor a redemption: they are
# about no purchase.
_LOT_EVENTS = frozenset(
    {
        EventType.AVAILABLE_EXPIRY,
        EventType.EXPIRY_NOTICE,
        EventType.PAYOUT_RUN,
        EventType.PAYOUT_RESULT,
        EventType.OPEN_WALLET,
        EventType.REDEEM,  # a redemption (stream.core.redemptions): about no purchase
    }
)


class Decision(msgspec.Struct, frozen=True, gc=False):  # a record: made for every event
    state: AccountState
    entries: tuple[Entry, ...]
    outcome: Outcome
    # offer_id -> minor units of its budget this event consumed (+) or gave back (-); {} when none
    budget_deltas: Mapping[str, int] = msgspec.field(default_factory=lambda: _NO_DELTAS)
    # what the customer is to be told beside the entries: expiry and paid notices (stream.core.notices); () when none
    notices: tuple[Notice, ...] = ()
    # budget key -> the most the decision's grants took it to, one after another (BEYOND_ANY_VIEW when the
    # budget's whole amount bound one): told that a budget has more than that left, every grant would be the
    # same and so would the decision ({} when no grant asked a budget)
    budget_reach: Mapping[str, int] = msgspec.field(default_factory=lambda: _NO_DELTAS)


def new_state() -> AccountState:
    """A new account's state: its wallet known, empty (a stored state without one is not known)."""
    return AccountState(wallet={})


def decide(
    event: CardEvent,
    offers: OfferBook,
    state: AccountState | None,
    profile: AccountProfile | None = None,
    budget_remaining: Mapping[str, int] | None = None,
    horizon_days: int = TRANSACTION_HORIZON_DAYS,
    abuse: AbuseRules | None = None,
) -> Decision:
    """Apply one card event to one account's state; return the new state, the ledger entries, the
    outcome and the budget deltas. ``abuse``: the abuse rules (None: their documented defaults,
    ``stream.core.abuse.DEFAULT_RULES``)."""
    state = state or new_state()
    fingerprint = event.fingerprint()
    held, replay = known(state, event)
    if held is not None:
        if held != fingerprint:
            return Decision(state, (), Outcome.DUPLICATE_CONFLICT)
        return Decision(state, replay, Outcome.DUPLICATE, notices=paid_again(event, state))

    step = AccountStep(event, state, offers, profile or NO_PROFILE, budget_remaining or _NO_DELTAS, abuse or DEFAULT_RULES)
    clock_ms = max(state.clock_ms or 0, step.at_ms)
    forget_before_ms = clock_ms - horizon_days * DAY_MS
    if purchase_ref(event) not in state.txns and step.at_ms < forget_before_ms and event.event_type not in _LOT_EVENTS:
        # Numbered apart: the event may be a redelivery whose first entries the ledger holds.
        outcome = step.not_earned(
            Outcome.BEYOND_HORIZON,
            f"{event.event_type.value.lower()} older than the account's {horizon_days}-day transaction horizon: not applied",
            number=Outcome.BEYOND_HORIZON.value,
        )
    else:
        outcome = _HANDLERS[event.event_type](step)
    step.prune_caps()
    index = derive(state)
    recent, loose, txns, forgotten = remember(state, step, fingerprint, forget_before_ms, index)
    new = AccountState(
        recent=recent,
        txns=txns,
        loose=loose,
        caps=step.caps,
        carry=step.carry,
        clock_ms=clock_ms,
        watch=remembered(step, clock_ms),
        lots=step.lots,
        wallet=step.wallet,
        payouts=step.payouts,
        ticked=state.ticked,  # the worker's, carried
    )
    new.due_ms = with_lots(index.next_due_ms(), new.lots)  # stream.core.lifecycle.next_due_ms(new), kept by the index
    keep(new, index, state, step.changed, forgotten)
    deltas = {offer_id: delta for offer_id, delta in step.budget_deltas.items() if delta}
    return Decision(
        new,
        tuple(step.entries),
        outcome,
        deltas,
        tuple(step.notices) if step.notices else (),
        step.budget_reach or _NO_DELTAS,
    )


# One handler per event type: stream.core.authorisations, .clearings, .clawbacks and .holds.
_HANDLERS = {
    EventType.AUTHORIZATION: on_authorization,
    EventType.INCREMENTAL_AUTHORIZATION: on_incremental,
    EventType.AUTHORIZATION_REVERSAL: on_reversal,
    EventType.AUTHORIZATION_EXPIRY: on_expiry,
    EventType.CLEARING: on_clearing,
    EventType.REFUND: on_refund,
    EventType.CHARGEBACK: on_chargeback,
    EventType.CHARGEBACK_REVERSAL: on_chargeback_reversal,
    EventType.RETURN_WINDOW_ENDED: on_return_window_ended,
    EventType.AVAILABLE_EXPIRY: on_available_expiry,
    EventType.EXPIRY_NOTICE: on_expiry_notice,
    EventType.RELEASE_HOLD: on_release_hold,
    EventType.FORFEIT_HOLD: on_forfeit_hold,
    EventType.HOLD_MERCHANT: on_hold_merchant,
    EventType.PAYOUT_RUN: on_payout_run,
    EventType.PAYOUT_RESULT: on_payout_result,
    EventType.OPEN_WALLET: on_open_wallet,
    EventType.REDEEM: on_redeem,
}
