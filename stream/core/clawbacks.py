"""The rules engine's handlers for money going back: a refund claws back its prorated share of the
cashback, a chargeback all of it, and a chargeback reversal credits it again (within the cap and
budget; or held, when an abuse rule flags it: ``stream.core.holds``). Clawbacks prorate what was
confirmed and leave the carried remainder alone.
"""

from __future__ import annotations

from collections.abc import Callable

from stream.core.expiry import consume
from stream.core.holds import HELD, note_refund, spend
from stream.core.money import format_minor, prorate
from stream.core.outcomes import Outcome
from stream.core.state import Share, Txn
from stream.core.working_copy import AccountStep, limit_note, spendable_book


def _claw_back(step: AccountStep, share: Share, amount: int, reason: str, detail: str) -> int:
    """Take ``amount`` back: from CONFIRMED first, then HELD (a reward held for review), then
    AVAILABLE (which may go negative, recorded). The cap period and the budget get it back."""
    # Never negative: a later clearing part can lower a refund's prorated target below what was
    # already taken back; that is not a reason to give cashback back.
    amount = max(0, min(amount, share.earned - share.clawed_back))
    from_confirmed = min(share.confirmed, amount)
    from_held = min(share.held, amount - from_confirmed)
    from_spendable = amount - from_confirmed - from_held
    taken = consume(step, share, from_spendable)  # first earned, first used (stream.core.expiry)
    if share.expiry_days is not None and taken < from_spendable:  # the rest expired: the sponsor has it back
        detail = f"{detail}; {format_minor(from_spendable - taken, share.currency)} of it expired unused before: not taken again"
        amount -= from_spendable - taken
        from_spendable = taken
    step.entry("CLAWED_BACK", "CONFIRMED", "EXPENSE", from_confirmed, share, reason, detail)
    step.entry("CLAWED_BACK", HELD, "EXPENSE", from_held, share, reason, detail)
    step.entry("CLAWED_BACK", spendable_book(share), "EXPENSE", from_spendable, share, reason, detail)
    step.hold(share, -amount)
    share.confirmed -= from_confirmed
    share.held -= from_held
    share.available -= from_spendable
    share.clawed_back += amount
    return amount


def _purchase_of(step: AccountStep) -> Txn | None:
    event = step.event
    txn = step.txn(event.original_transaction_ref or event.transaction_ref)
    return txn if txn is not None and txn.cleared_basis > 0 else None


_ITEMS = {"REFUND": "unknown_refund", "CHARGEBACK": "unknown_chargeback", "CHARGEBACK_REVERSAL": "unknown_chargeback_reversal"}


def _unknown_purchase(step: AccountStep) -> None:
    """A reconciliation item (``AccountStep.reconcile``): the purchase is not one the worker saw
    cleared; never seen (or forgotten at the horizon), or only authorised."""
    event = step.event
    ref = event.original_transaction_ref or event.transaction_ref
    seen = step.txns.get(ref)
    what = event.event_type.value.lower().replace("_", " ")
    why = "never seen by the worker" if seen is None else f"not cleared (status {seen.status})"
    amount = format_minor(event.billing_amount_minor, event.billing_currency)
    step.reconcile(_ITEMS[event.event_type.value], f"{what} of {amount} for purchase {ref}: {why}")


def _on_each_share(
    step: AccountStep,
    moved: Outcome,
    act: Callable[[Txn, Share], int],
    first: Callable[[Txn], None] | None = None,
) -> Outcome:
    """The purchase the event is about (cleared at least in part): ``first`` on it, then ``act`` on
    each of its shares, which returns the amount it moved; ``moved`` when any did."""
    txn = _purchase_of(step)
    if txn is None:
        _unknown_purchase(step)
        return Outcome.UNKNOWN_TRANSACTION
    if first is not None:
        first(txn)
    total = sum(act(txn, share) for share in txn.shares)
    return moved if total else Outcome.NO_CHANGE


def on_refund(step: AccountStep) -> Outcome:
    def add_refund(txn: Txn) -> None:
        txn.refunded_basis = min(txn.cleared_basis, txn.refunded_basis + step.event.billing_amount_minor)

    def claw_back(txn: Txn, share: Share) -> int:
        target = prorate(share.earned, txn.refunded_basis, txn.cleared_basis)
        detail = (
            f"refund: {format_minor(txn.refunded_basis, txn.currency)} of "
            f"{format_minor(txn.cleared_basis, txn.currency)} refunded in all"
        )
        taken = _claw_back(step, share, target - share.refund_clawed, "refund", detail)
        share.refund_clawed += taken
        return taken

    outcome = _on_each_share(step, Outcome.CLAWED_BACK, claw_back, first=add_refund)
    note_refund(step)  # for the refund loops (stream.core.holds)
    return outcome


def on_chargeback(step: AccountStep) -> Outcome:
    def claw_back(txn: Txn, share: Share) -> int:
        detail = "chargeback: all cashback of the purchase"
        taken = _claw_back(step, share, share.earned - share.clawed_back, "chargeback", detail)
        share.chargeback_clawed += taken
        return taken

    return _on_each_share(step, Outcome.CLAWED_BACK, claw_back)


def on_chargeback_reversal(step: AccountStep) -> Outcome:
    def recredit(txn: Txn, share: Share) -> int:
        amount, limit = step.grant(share, share.chargeback_clawed)
        note = limit_note(share, limit)
        detail = "chargeback reversed: cashback credited again" + (f" ({note})" if note else "")
        if share.pending_days == 0:  # spendable at once, or held when an abuse rule flags it
            spend(step, txn, share, amount, "EXPENSE", "RECREDITED", "chargeback_reversed", detail, detail)
        else:
            step.entry("RECREDITED", "EXPENSE", "CONFIRMED", amount, share, "chargeback_reversed", detail)
            share.confirmed += amount
        step.hold(share, amount)
        share.clawed_back -= amount
        share.chargeback_clawed -= amount
        return amount

    return _on_each_share(step, Outcome.RECREDITED, recredit)
