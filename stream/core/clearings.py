"""The rules engine's handlers for settlement: a clearing (or one part of a multi-clearing purchase,
or a force post judged on its own) confirms cashback, and the end of its return window makes it
available. Each takes the event's working copy and returns the outcome; ``stream.core.rules``
dispatches to them.
"""

from __future__ import annotations

import msgspec

from stream.core.authorisations import Limited, limited_outcome
from stream.core.holds import note_purchase, note_rewarded, spend
from stream.core.judgement import new_txn, reconsider, refuse, shares_for, still_refused
from stream.core.lifecycle import open_return_window, window_over
from stream.core.money import format_minor
from stream.core.outcomes import Outcome
from stream.core.rewards import Amount, at_most_per_purchase, compute, describe
from stream.core.state import Share
from stream.core.working_copy import AccountStep, limit_note, purchase_basis


def _confirm(step: AccountStep, share: Share, basis: int, size: int) -> tuple[int, int, Amount, Outcome | None]:
    """What a clearing part confirms for one share: (from pending, from expense, amount, limit)."""
    key = step.carry_key(share)
    if share.method == "fixed":  # one fixed reward per purchase, whatever the number of parts
        amount = compute(share, basis, size)
        wanted = max(0, amount.reward_minor - share.earned)
    else:
        amount = compute(share, basis, size, step.carry.get(key, 0))
        wanted = amount.reward_minor
    wanted = at_most_per_purchase(share, wanted, share.earned)
    from_pending = min(share.pending, wanted)
    extra, limit = step.grant(share, wanted - from_pending)
    if share.method != "fixed":
        # What a limit cuts is not owed, nor is its fraction.
        carried = amount.carried_out if from_pending + extra == amount.reward_minor else 0
        amount = msgspec.structs.replace(amount, carried_out=carried)
        if carried:
            step.own_carry()[key] = carried
        elif key in step.carry:
            step.own_carry().pop(key)
    return from_pending, extra, amount, limit


def on_clearing(step: AccountStep) -> Outcome:
    event = step.event
    txn = step.txn(event.transaction_ref)
    force_post = txn is None
    final = event.clearing_count is None or event.clearing_sequence == event.clearing_count
    if txn is None:
        # A force post, or a clearing that arrived before its authorisation: judged on its own, and an item for
        # operations to reconcile whether it earns or not (a late authorisation then changes nothing).
        billed = format_minor(event.billing_amount_minor, event.billing_currency)
        step.reconcile("force_post", f"clearing of {billed} without an authorisation the worker saw")
        shares, found = shares_for(step)
        if not shares:
            return refuse(step, found, "cleared" if final else "clearing")
        txn = step.put(event.transaction_ref, new_txn(event, shares, "clearing"))
        txn.force_post = True
        note_purchase(step, event.transaction_ref)  # before it may become spendable below
    elif txn.status == "cleared":
        return Outcome.ALREADY_SETTLED
    elif txn.refused:
        shares, _ = reconsider(step, txn, txn.cleared_basis + purchase_basis(event))
        if not shares:
            txn.cleared_basis += purchase_basis(event)
            txn.status = "cleared" if final else "clearing"
            return still_refused(step, txn, "clearing")
        txn.shares = tuple(shares)
    basis = purchase_basis(event)
    part = "" if event.clearing_count is None else f" (part {event.clearing_sequence} of {event.clearing_count})"
    limited: Limited = []
    confirmed_any = False
    rewarded_before = any(share.earned > 0 for share in txn.shares)
    for share in txn.shares:
        from_pending, extra, amount, limit = _confirm(step, share, basis, txn.cleared_basis + basis)
        confirm = from_pending + extra
        note = limit_note(share, limit)
        if from_pending > 0 or extra > 0:  # the explanation only for an entry
            detail = f"confirmed{part}: {describe(share, basis, amount, confirm, note)}"
            step.entry("CONFIRMED", "PENDING", "CONFIRMED", from_pending, share, "confirmed", detail, basis, force_post, amount)
            step.entry("CONFIRMED", "EXPENSE", "CONFIRMED", extra, share, "confirmed", detail, basis, force_post, amount)
        step.hold(share, extra)
        share.pending -= from_pending
        share.confirmed += confirm
        share.earned += confirm
        confirmed_any = confirmed_any or confirm > 0
        if confirm > 0 and not rewarded_before:  # its first reward: the refund loop's share (stream.core.holds)
            note_rewarded(step)
            rewarded_before = True
        if limit is not None and confirm == 0:
            limited.append((share, limit, note))
        if final and share.pending > 0:
            step.entry(
                "PENDING_RELEASED",
                "PENDING",
                "EXPENSE",
                share.pending,
                share,
                "released",
                "final clearing: pending not cleared is released",
            )
            step.hold(share, -share.pending)
            share.pending = 0
        if share.pending_days == 0 and share.confirmed > 0:
            detail = "no return window: available at once"
            spend(step, txn, share, share.confirmed, "CONFIRMED", "MADE_AVAILABLE", "available", detail, "no return window")
            share.confirmed = 0
        elif confirm > 0:
            open_return_window(share, event)
    txn.cleared_basis += basis
    txn.status = "cleared" if final else "clearing"
    if limited and not confirmed_any:
        return limited_outcome(step, limited, "clearing")
    return Outcome.CONFIRMED


def on_return_window_ended(step: AccountStep) -> Outcome:
    """Time passing (stream.core.lifecycle): confirmed cashback whose return window is over becomes
    available, or held when an abuse rule flags it (stream.core.holds)."""
    txn = step.txn(step.event.transaction_ref)
    if txn is None:
        return Outcome.UNKNOWN_TRANSACTION
    available = held = 0
    for share in txn.shares:
        if share.confirmed > 0 and window_over(share, step.event):
            cause = f"return window of {share.pending_days} days over"
            spent = spend(
                step, txn, share, share.confirmed, "CONFIRMED", "MADE_AVAILABLE", "available", f"{cause}: available", cause
            )
            available, held = available + spent.available, held + spent.held
            share.confirmed = 0
    if available:
        return Outcome.MADE_AVAILABLE
    return Outcome.HELD if held else Outcome.NO_CHANGE
