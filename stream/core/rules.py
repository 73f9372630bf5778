"""The rules engine: ``decide(event, offers, state, profile, budget_remaining) -> Decision``.
Pure: no I/O, no clock, no await.

The same function runs in the matcher agent, the tests' oracle and the back-test. Offer selection
is in ``stream.core.eligibility``, amounts in ``stream.core.rewards``, the working copy of the state
with its caps and budgets in ``stream.core.working_copy``; this module applies one event to one
account's state.

State is one account's, a plain JSON-shaped dict (``decide`` never mutates the state it is given,
it returns a new one, sharing the transactions it did not touch; the worker stores it as a summary
and a row per transaction and recent event: ``stream.core.state_rows``)::

    {"recent": {event_id: [fingerprint, entries]},       # the last 32 events, to re-emit after a crash
     "txns":   {transaction_ref: {..., "shares": [..],    # purchases, one share per offer earned,
                                  "events": {event_id: fingerprint}}},  # with every event id of theirs
     "loose":  {event_id: [fingerprint, occurred_ms]},   # events with no transaction (a refund of a
                                                         # purchase never seen, a declined authorisation)
     "caps":   {limits_key: {period_key: held_minor}},   # cap usage per offer (and currency) and period
     "carry":  {"offer_id:UNIT": remainder},             # unpaid fractions, 1/10,000ths of a minor unit
     "due_ms": epoch_ms | None,                          # earliest expiry or end of a return window (stream.core.lifecycle)
     "clock_ms": epoch_ms}                               # the latest event time of the account

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
  customer's donated total; ``beneficiary_id`` on the entry names the charity).

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
stackable one.

**Amounts**: a rate (the best tier the account is in replaces the base rate; a boost rate, when
higher, applies to the whole purchase once its size reaches the threshold: the authorised basis
for pending, the basis cleared so far, this part included, for a confirmation, so parts of a
multi-clearing purchase cleared before the threshold is reached keep the lower rate); a fixed
reward, once per purchase whatever its clearing parts; or whole points per whole currency unit,
always rounded down, the fraction carried like a cash remainder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from stream.core.eligibility import NO_PROFILE, AccountProfile
from stream.core.entries import Entry
from stream.core.events import CardEvent, EventType
from stream.core.judgement import new_txn, reconsider, refuse, shares_for, still_refused
from stream.core.lifecycle import DAY_MS, authorization_expires_at, next_due_ms, open_return_window, window_over
from stream.core.memory import TRANSACTION_HORIZON_DAYS, home_ref, known, remember
from stream.core.money import format_minor, prorate
from stream.core.offers import AccrueOn, OfferBook
from stream.core.outcomes import Outcome
from stream.core.rewards import Amount, Share, at_most_per_purchase, compute, describe
from stream.core.working_copy import AccountStep, State, limit_note, purchase_basis, spendable_book

__all__ = ["AccountProfile", "Decision", "Outcome", "decide", "new_state"]

_NO_DELTAS: Mapping[str, int] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Decision:
    state: State
    entries: tuple[Entry, ...]
    outcome: Outcome
    # offer_id -> minor units of its budget this event consumed (+) or gave back (-); {} when none
    budget_deltas: Mapping[str, int] = field(default_factory=lambda: _NO_DELTAS)


def new_state() -> State:
    return {"recent": {}, "txns": {}, "loose": {}, "caps": {}, "carry": {}, "due_ms": None, "clock_ms": None}


def decide(
    event: CardEvent,
    offers: OfferBook,
    state: State | None,
    profile: AccountProfile | None = None,
    budget_remaining: Mapping[str, int] | None = None,
    horizon_days: int = TRANSACTION_HORIZON_DAYS,
) -> Decision:
    """Apply one card event to one account's state; return the new state, the ledger entries, the
    outcome and the budget deltas."""
    state = state or new_state()
    fingerprint = event.fingerprint()
    held, replay = known(state, event)
    if held is not None:
        if held != fingerprint:
            return Decision(state, (), Outcome.DUPLICATE_CONFLICT)
        return Decision(state, replay, Outcome.DUPLICATE)

    step = AccountStep(event, state, offers, profile or NO_PROFILE, budget_remaining or _NO_DELTAS)
    clock_ms = max(state.get("clock_ms") or 0, event.occurred_at_ms)
    forget_before_ms = clock_ms - horizon_days * DAY_MS
    if home_ref(event) not in state["txns"] and event.occurred_at_ms < forget_before_ms:
        # Numbered apart: the event may be a redelivery whose first entries the ledger holds.
        outcome = step.not_earned(
            Outcome.BEYOND_HORIZON,
            f"{event.event_type.value.lower()} older than the account's {horizon_days}-day transaction horizon: not applied",
            number=Outcome.BEYOND_HORIZON.value,
        )
    else:
        outcome = _HANDLERS[event.event_type](step)
    step.prune_caps()
    recent, loose, txns = remember(state, step, fingerprint, forget_before_ms)
    new: State = {
        "recent": recent,
        "txns": txns,
        "loose": loose,
        "caps": step.caps,
        "carry": step.carry,
    }
    new["due_ms"] = next_due_ms(new)
    new["clock_ms"] = clock_ms
    deltas = {offer_id: delta for offer_id, delta in step.budget_deltas.items() if delta}
    return Decision(new, tuple(step.entries), outcome, deltas)


# --- handlers, one per event type ---------------------------------------------------------------


Limited = list[tuple[Share, Outcome, str]]  # shares a limit left with nothing, the limit, its note


def _set_pending(step: AccountStep, txn: dict[str, Any], kind: str) -> tuple[bool, Limited]:
    """Move each share's pending cashback to what the authorised basis now earns (no carry: pending
    is provisional), as far as its cap and budget allow."""
    changed, limited = False, []
    basis = txn["authorized_basis"]
    for share in txn["shares"]:
        amount = replace(compute(share, basis, basis), carried_out=0)
        target = 0 if share["accrue_on"] == AccrueOn.CLEARING.value else at_most_per_purchase(share, amount.reward_minor)
        delta, limit = target - share["pending"], None
        if delta > 0:
            delta, limit = step.grant(share, delta)
        note = limit_note(share, limit)
        detail = describe(share, basis, amount, share["pending"] + delta, note)
        if delta > 0:
            step.entry(kind, "EXPENSE", "PENDING", delta, share, "earned", f"pending {detail}", basis, amount=amount)
        elif delta < 0:
            step.entry(
                "PENDING_RELEASED", "PENDING", "EXPENSE", -delta, share, "released", f"pending now {detail}", basis, amount=amount
            )
        step.hold(share, delta)
        share["pending"] += delta
        changed = changed or delta != 0
        if limit is not None and share["pending"] == 0:
            limited.append((share, limit, note))
    return changed, limited


def _limited(step: AccountStep, limited: Limited, what: str) -> Outcome:
    share, limit, note = limited[0]
    return step.not_earned(limit, f"{what} earns nothing: {limit.value} ({note})", share)


def _on_authorization(step: AccountStep) -> Outcome:
    event = step.event
    existing = step.txns.get(event.transaction_ref)
    if existing is not None:
        # A late authorisation after its clearing (out of order), or a second one for the same ref.
        return Outcome.ALREADY_SETTLED if existing["status"] != "authorized" else Outcome.NO_CHANGE
    shares, found = shares_for(step)
    if not shares:
        return refuse(step, found, "authorized")
    txn = step.put(event.transaction_ref, new_txn(event, shares, "authorized"))
    txn["authorized_basis"] = purchase_basis(event)
    txn["expires_at_ms"] = authorization_expires_at(event, [step.offers.get(share["offer_id"]) for share in shares])
    return _pending_outcome(step, txn, "PENDING_CREATED", "authorisation")


def _pending_outcome(step: AccountStep, txn: dict[str, Any], kind: str, what: str) -> Outcome:
    changed, limited = _set_pending(step, txn, kind)
    if changed:
        return Outcome.EARNED
    if limited:  # kept: a clearing may still earn, once a refund gives headroom back
        return _limited(step, limited, what)
    return Outcome.MATCHED_ACCRUES_ON_CLEARING


def _authorized(step: AccountStep) -> tuple[dict[str, Any] | None, Outcome | None]:
    txn = step.txn(step.event.transaction_ref)
    if txn is None or txn["status"] != "authorized":
        return None, Outcome.UNKNOWN_TRANSACTION if txn is None else Outcome.ALREADY_SETTLED
    return txn, None


def _on_incremental(step: AccountStep) -> Outcome:
    txn, problem = _authorized(step)
    if txn is None:
        return problem or Outcome.UNKNOWN_TRANSACTION
    if not step.event.approved:
        return Outcome.DECLINED
    txn["authorized_basis"] += purchase_basis(step.event)
    if txn.get("refused"):
        shares, purchase = reconsider(step, txn, txn["authorized_basis"])
        if not shares:
            return Outcome.NO_CHANGE
        txn["shares"] = shares
        txn["expires_at_ms"] = authorization_expires_at(purchase, [step.offers.get(s["offer_id"]) for s in shares])
        return _pending_outcome(step, txn, "PENDING_CREATED", "incremental authorisation")
    return Outcome.ADJUSTED if _set_pending(step, txn, "PENDING_ADJUSTED")[0] else Outcome.NO_CHANGE


def _on_reversal(step: AccountStep) -> Outcome:
    txn, problem = _authorized(step)
    if txn is None:
        return problem or Outcome.UNKNOWN_TRANSACTION
    txn["authorized_basis"] = max(0, txn["authorized_basis"] - purchase_basis(step.event))
    return Outcome.RELEASED if _set_pending(step, txn, "PENDING_ADJUSTED")[0] else Outcome.NO_CHANGE


def _on_expiry(step: AccountStep) -> Outcome:
    """The authorisation expired: what is still pending is released. A partly cleared purchase
    keeps its status, so a late part still confirms (from the expense, like a late clearing)."""
    txn = step.txn(step.event.transaction_ref)
    if txn is None:
        return Outcome.UNKNOWN_TRANSACTION
    if txn["status"] not in ("authorized", "clearing"):
        return Outcome.ALREADY_SETTLED
    if txn["status"] == "authorized":
        txn["status"] = "expired"
    for share in txn["shares"]:
        step.entry("EXPIRED", "PENDING", "EXPENSE", share["pending"], share, "expired", "authorisation expired: pending released")
        step.hold(share, -share["pending"])
        share["pending"] = 0
    return Outcome.EXPIRED


def _confirm(step: AccountStep, share: Share, basis: int, size: int) -> tuple[int, int, Amount, Outcome | None]:
    """What a clearing part confirms for one share: (from pending, from expense, amount, limit)."""
    key = step.carry_key(share)
    if share["method"] == "fixed":  # one fixed reward per purchase, whatever the number of parts
        amount = compute(share, basis, size)
        wanted = max(0, amount.reward_minor - share["earned"])
    else:
        amount = compute(share, basis, size, step.carry.get(key, 0))
        wanted = amount.reward_minor
    wanted = at_most_per_purchase(share, wanted, share["earned"])
    from_pending = min(share["pending"], wanted)
    extra, limit = step.grant(share, wanted - from_pending)
    if share["method"] != "fixed":
        # What a limit cuts is not owed, nor is its fraction.
        carried = amount.carried_out if from_pending + extra == amount.reward_minor else 0
        amount = replace(amount, carried_out=carried)
        if carried:
            step.carry[key] = carried
        else:
            step.carry.pop(key, None)
    return from_pending, extra, amount, limit


def _on_clearing(step: AccountStep) -> Outcome:
    event = step.event
    txn = step.txn(event.transaction_ref)
    force_post = txn is None
    final = event.clearing_count is None or event.clearing_sequence == event.clearing_count
    if txn is None:
        # A force post, or a clearing that arrived before its authorisation: judged on its own.
        shares, found = shares_for(step)
        if not shares:
            return refuse(step, found, "cleared" if final else "clearing")
        txn = step.put(event.transaction_ref, new_txn(event, shares, "clearing"))
        txn["force_post"] = True
    elif txn["status"] == "cleared":
        return Outcome.ALREADY_SETTLED
    elif txn.get("refused"):
        shares, _ = reconsider(step, txn, txn["cleared_basis"] + purchase_basis(event))
        if not shares:
            txn["cleared_basis"] += purchase_basis(event)
            txn["status"] = "cleared" if final else "clearing"
            return still_refused(step, txn, "clearing")
        txn["shares"] = shares
    basis = purchase_basis(event)
    part = "" if event.clearing_count is None else f" (part {event.clearing_sequence} of {event.clearing_count})"
    limited: Limited = []
    confirmed_any = False
    for share in txn["shares"]:
        from_pending, extra, amount, limit = _confirm(step, share, basis, txn["cleared_basis"] + basis)
        confirm = from_pending + extra
        note = limit_note(share, limit)
        detail = f"confirmed{part}: {describe(share, basis, amount, confirm, note)}"
        step.entry("CONFIRMED", "PENDING", "CONFIRMED", from_pending, share, "confirmed", detail, basis, force_post, amount)
        step.entry("CONFIRMED", "EXPENSE", "CONFIRMED", extra, share, "confirmed", detail, basis, force_post, amount)
        step.hold(share, extra)
        share["pending"] -= from_pending
        share["confirmed"] += confirm
        share["earned"] += confirm
        confirmed_any = confirmed_any or confirm > 0
        if limit is not None and confirm == 0:
            limited.append((share, limit, note))
        if final and share["pending"] > 0:
            step.entry(
                "PENDING_RELEASED",
                "PENDING",
                "EXPENSE",
                share["pending"],
                share,
                "released",
                "final clearing: pending not cleared is released",
            )
            step.hold(share, -share["pending"])
            share["pending"] = 0
        if share["pending_days"] == 0 and share["confirmed"] > 0:
            step.entry(
                "MADE_AVAILABLE",
                "CONFIRMED",
                spendable_book(share),
                share["confirmed"],
                share,
                "available",
                "no return window: available at once",
            )
            share["available"] += share["confirmed"]
            share["confirmed"] = 0
        elif confirm > 0:
            open_return_window(share, event)
    txn["cleared_basis"] += basis
    txn["status"] = "cleared" if final else "clearing"
    if limited and not confirmed_any:
        return _limited(step, limited, "clearing")
    return Outcome.CONFIRMED


def _claw_back(step: AccountStep, share: Share, amount: int, reason: str, detail: str) -> int:
    """Take ``amount`` back: from CONFIRMED first, then AVAILABLE (which may go negative, recorded).
    The cap period and the budget get it back."""
    # Never negative: a later clearing part can lower a refund's prorated target below what was
    # already taken back; that is not a reason to give cashback back.
    amount = max(0, min(amount, share["earned"] - share["clawed_back"]))
    from_confirmed = min(share["confirmed"], amount)
    step.entry("CLAWED_BACK", "CONFIRMED", "EXPENSE", from_confirmed, share, reason, detail)
    step.entry("CLAWED_BACK", spendable_book(share), "EXPENSE", amount - from_confirmed, share, reason, detail)
    step.hold(share, -amount)
    share["confirmed"] -= from_confirmed
    share["available"] -= amount - from_confirmed
    share["clawed_back"] += amount
    return amount


def _purchase_of(step: AccountStep) -> dict[str, Any] | None:
    event = step.event
    txn = step.txn(event.original_transaction_ref or event.transaction_ref)
    return txn if txn is not None and txn["cleared_basis"] > 0 else None


def _on_refund(step: AccountStep) -> Outcome:
    txn = _purchase_of(step)
    if txn is None:
        return Outcome.UNKNOWN_TRANSACTION
    txn["refunded_basis"] = min(txn["cleared_basis"], txn["refunded_basis"] + step.event.billing_amount_minor)
    clawed = 0
    for share in txn["shares"]:
        target = prorate(share["earned"], txn["refunded_basis"], txn["cleared_basis"])
        detail = (
            f"refund: {format_minor(txn['refunded_basis'], txn['currency'])} of "
            f"{format_minor(txn['cleared_basis'], txn['currency'])} refunded in all"
        )
        taken = _claw_back(step, share, target - share["refund_clawed"], "refund", detail)
        share["refund_clawed"] += taken
        clawed += taken
    return Outcome.CLAWED_BACK if clawed else Outcome.NO_CHANGE


def _on_chargeback(step: AccountStep) -> Outcome:
    txn = _purchase_of(step)
    if txn is None:
        return Outcome.UNKNOWN_TRANSACTION
    clawed = 0
    for share in txn["shares"]:
        taken = _claw_back(
            step, share, share["earned"] - share["clawed_back"], "chargeback", "chargeback: all cashback of the purchase"
        )
        share["chargeback_clawed"] += taken
        clawed += taken
    return Outcome.CLAWED_BACK if clawed else Outcome.NO_CHANGE


def _on_chargeback_reversal(step: AccountStep) -> Outcome:
    txn = _purchase_of(step)
    if txn is None:
        return Outcome.UNKNOWN_TRANSACTION
    recredited = 0
    for share in txn["shares"]:
        amount, limit = step.grant(share, share["chargeback_clawed"])
        book = spendable_book(share) if share["pending_days"] == 0 else "CONFIRMED"
        note = limit_note(share, limit)
        detail = "chargeback reversed: cashback credited again" + (f" ({note})" if note else "")
        step.entry("RECREDITED", "EXPENSE", book, amount, share, "chargeback_reversed", detail)
        step.hold(share, amount)
        share["confirmed" if book == "CONFIRMED" else "available"] += amount
        share["clawed_back"] -= amount
        share["chargeback_clawed"] -= amount
        recredited += amount
    return Outcome.RECREDITED if recredited else Outcome.NO_CHANGE


def _on_return_window_ended(step: AccountStep) -> Outcome:
    """Time passing (stream.core.lifecycle): confirmed cashback whose return window is over becomes
    available."""
    txn = step.txn(step.event.transaction_ref)
    if txn is None:
        return Outcome.UNKNOWN_TRANSACTION
    moved = 0
    for share in txn["shares"]:
        if share["confirmed"] > 0 and window_over(share, step.event):
            detail = f"return window of {share['pending_days']} days over: available"
            step.entry("MADE_AVAILABLE", "CONFIRMED", spendable_book(share), share["confirmed"], share, "available", detail)
            share["available"] += share["confirmed"]
            moved += share["confirmed"]
            share["confirmed"] = 0
    return Outcome.MADE_AVAILABLE if moved else Outcome.NO_CHANGE


_HANDLERS = {
    EventType.AUTHORIZATION: _on_authorization,
    EventType.INCREMENTAL_AUTHORIZATION: _on_incremental,
    EventType.AUTHORIZATION_REVERSAL: _on_reversal,
    EventType.AUTHORIZATION_EXPIRY: _on_expiry,
    EventType.CLEARING: _on_clearing,
    EventType.REFUND: _on_refund,
    EventType.CHARGEBACK: _on_chargeback,
    EventType.CHARGEBACK_REVERSAL: _on_chargeback_reversal,
    EventType.RETURN_WINDOW_ENDED: _on_return_window_ended,
}
