"""The rules engine's handlers for the pending side of a purchase: its authorisation (judged
once, ``stream.core.judgement``), incremental authorisations, reversals and the authorisation's
expiry. Each takes the event's working copy (``stream.core.working_copy``) and returns the outcome;
``stream.core.rules`` dispatches to them.

Pending cashback is provisional: it follows the authorised amount, carries no remainder, and
reserves its cap and budget so that nothing is promised twice.
"""

from __future__ import annotations

import msgspec

from stream.core.holds import note_purchase
from stream.core.judgement import new_txn, reconsider, refuse, shares_for
from stream.core.lifecycle import authorization_expires_at
from stream.core.money import format_minor
from stream.core.offers import AccrueOn
from stream.core.outcomes import Outcome
from stream.core.rewards import at_most_per_purchase, compute, describe
from stream.core.state import Share, Txn
from stream.core.working_copy import AccountStep, limit_note, purchase_basis

_ON_CLEARING = AccrueOn.CLEARING.value
Limited = list[tuple[Share, Outcome, str]]  # shares a limit left with nothing, the limit, its note


def _set_pending(step: AccountStep, txn: Txn, kind: str) -> tuple[bool, Limited]:
    """Move each share's pending cashback to what the authorised basis now earns (no carry: pending
    is provisional), as far as its cap and budget allow."""
    changed, limited = False, []
    basis = txn.authorized_basis
    for share in txn.shares:
        amount = msgspec.structs.replace(compute(share, basis, basis), carried_out=0)
        target = 0 if share.accrue_on == _ON_CLEARING else at_most_per_purchase(share, amount.reward_minor)
        delta, limit = target - share.pending, None
        if delta > 0:
            delta, limit = step.grant(share, delta)
        note = limit_note(share, limit)
        if delta > 0:  # the explanation only for an entry
            detail = describe(share, basis, amount, share.pending + delta, note)
            step.entry(kind, "EXPENSE", "PENDING", delta, share, "earned", f"pending {detail}", basis, amount=amount)
        elif delta < 0:
            detail = describe(share, basis, amount, share.pending + delta, note)
            step.entry(
                "PENDING_RELEASED", "PENDING", "EXPENSE", -delta, share, "released", f"pending now {detail}", basis, amount=amount
            )
        step.hold(share, delta)
        share.pending += delta
        changed = changed or delta != 0
        if limit is not None and share.pending == 0:
            limited.append((share, limit, note))
    return changed, limited


def limited_outcome(step: AccountStep, limited: Limited, what: str) -> Outcome:
    share, limit, note = limited[0]
    return step.not_earned(limit, f"{what} earns nothing: {limit.value} ({note})", share)


def on_authorization(step: AccountStep) -> Outcome:
    event = step.event
    existing = step.txns.get(event.transaction_ref)
    if existing is not None:
        # A late authorisation after its clearing (out of order), or a second one for the same ref.
        if existing.status == "authorized":
            return Outcome.NO_CHANGE
        if existing.authorized_basis == 0 and event.approved:
            # The clearing was taken for a force post (no authorisation seen then: a ``force_post`` item);
            # its authorisation came after all: an item that answers it, for operations' count of force posts.
            billed = format_minor(event.billing_amount_minor, event.billing_currency)
            step.reconcile("late_authorisation", f"authorisation of {billed} after its clearing (not a force post after all)")
        return Outcome.ALREADY_SETTLED
    shares, found = shares_for(step)
    if not shares:
        return refuse(step, found, "authorized")
    txn = step.put(event.transaction_ref, new_txn(event, shares, "authorized"))
    txn.authorized_basis = purchase_basis(event)
    txn.expires_at_ms = authorization_expires_at(event, [step.offers.get(share.offer_id) for share in shares])
    note_purchase(step, event.transaction_ref)  # the abuse rules (stream.core.holds)
    return _pending_outcome(step, txn, "PENDING_CREATED", "authorisation")


def _pending_outcome(step: AccountStep, txn: Txn, kind: str, what: str) -> Outcome:
    changed, limited = _set_pending(step, txn, kind)
    if changed:
        return Outcome.EARNED
    if limited:  # kept: a clearing may still earn, once a refund gives headroom back
        return limited_outcome(step, limited, what)
    return Outcome.MATCHED_ACCRUES_ON_CLEARING


def _authorized(step: AccountStep) -> tuple[Txn | None, Outcome | None]:
    txn = step.txn(step.event.transaction_ref)
    if txn is None or txn.status != "authorized":
        return None, Outcome.UNKNOWN_TRANSACTION if txn is None else Outcome.ALREADY_SETTLED
    return txn, None


def on_incremental(step: AccountStep) -> Outcome:
    txn, problem = _authorized(step)
    if txn is None:
        return problem or Outcome.UNKNOWN_TRANSACTION
    if not step.event.approved:
        return Outcome.DECLINED
    txn.authorized_basis += purchase_basis(step.event)
    if txn.refused:
        shares, purchase = reconsider(step, txn, txn.authorized_basis)
        if not shares:
            return Outcome.NO_CHANGE
        txn.shares = tuple(shares)
        txn.expires_at_ms = authorization_expires_at(purchase, [step.offers.get(s.offer_id) for s in shares])
        return _pending_outcome(step, txn, "PENDING_CREATED", "incremental authorisation")
    return Outcome.ADJUSTED if _set_pending(step, txn, "PENDING_ADJUSTED")[0] else Outcome.NO_CHANGE


def on_reversal(step: AccountStep) -> Outcome:
    txn, problem = _authorized(step)
    if txn is None:
        return problem or Outcome.UNKNOWN_TRANSACTION
    txn.authorized_basis = max(0, txn.authorized_basis - purchase_basis(step.event))
    return Outcome.RELEASED if _set_pending(step, txn, "PENDING_ADJUSTED")[0] else Outcome.NO_CHANGE


def on_expiry(step: AccountStep) -> Outcome:
    """The authorisation expired: what is still pending is released. A partly cleared purchase
    keeps its status, so a late part still confirms (from the expense, like a late clearing)."""
    txn = step.txn(step.event.transaction_ref)
    if txn is None:
        return Outcome.UNKNOWN_TRANSACTION
    if txn.status not in ("authorized", "clearing"):
        return Outcome.ALREADY_SETTLED
    if txn.status == "authorized":
        txn.status = "expired"
    for share in txn.shares:
        step.entry("EXPIRED", "PENDING", "EXPENSE", share.pending, share, "expired", "authorisation expired: pending released")
        step.hold(share, -share.pending)
        share.pending = 0
    return Outcome.EXPIRED
