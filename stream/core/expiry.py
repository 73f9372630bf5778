"""Expiry of unused rewards: points and store credit left AVAILABLE expire, first earned first
expired, with a ledger entry (issue 12, part 2).

**What expires.** A reward of an offer with ``available_expiry_days`` (POINTS and STORE_CREDIT
only: cash is the customer's money and a charity reward is given away; ``offer_parsing`` refuses
it for them) that became AVAILABLE: at the end of its return window, at once without one, a
chargeback reversal credited at once, a hold released. The share keeps the offer's terms at the
purchase (``Share.expiry_days``, ``Share.notice_days``), like its return window: changing the
offer later does not change what was earned under it.

**Lots** (``AccountState.lots``, in the account's summary): what became available on one UTC day
under one offer and unit expires together, at the end of the UTC day ``expiry_days`` after it
(``expires_at``), so an account keeps at most one lot per offer, unit and day of its period:
bounded by the period, whatever the number of purchases. A lot keeps what is left of it, when it
became available, when it expires, when the customer is to be told (``notice_ms``: the expiry less
``notice_days``, None without a notice) and whether they were (``noticed``), the purchase that
opened it and how many rewards it holds.

**First earned, first used.** Whatever takes from AVAILABLE takes from the lots of its offer and
unit, the oldest first (``consume``): today a refund or a chargeback clawing back a reward already
available (``stream.core.clawbacks``). The lots are per offer, not per unit across offers, so each
sponsor's EXPENSE book gets back exactly what its own rewards left unused. A redemption
(``stream.core.redemptions``) takes from the lots of its kind and unit, whatever the offer, the oldest
first (``stream.core.redemptions.take_from_lots``), moving it from ``amount`` to ``redeemed``, so the lots of an offer whose rewards
expire hold all its AVAILABLE plus what was redeemed of it: a clawback of such a reward takes what its
offer's lots still hold, then what was redeemed of them (spent: AVAILABLE may go negative, as for cash
paid out), never what already expired (the sponsor got that back, the customer is not charged twice).
A lot redeemed whole is kept, amount 0, until its expiry, which moves nothing and tells nothing; at the
expiry a lot is dropped with what was redeemed of it (a refund after that takes nothing of it).

**Expiry.** ``stream.core.lifecycle`` makes an internal ``AVAILABLE_EXPIRY`` event at a lot's
expiry (id ``available_expiry:<account>:<opening purchase>:<expiry ms>``, at the expiry time, not
the tick's), which ``decide`` applies like any event: each lot of that purchase due by then moves
what is left from AVAILABLE back to the sponsor's EXPENSE book, in an entry of kind
``AVAILABLE_EXPIRED`` (reason ``expired_unused``). An expired lot is gone, so a redelivered tick
finds nothing; the event id is remembered like any other, so a replayed event re-emits the same
entries. Caps and campaign budgets are not given back: the reward was given, the customer let it
lapse (a budget counts what was granted).

**Notice** (issue 12, part 3). At a lot's ``notice_ms``, ``stream.core.lifecycle`` makes an
internal ``EXPIRY_NOTICE`` event (id ``expiry_notice:<account>:<opening purchase>:<notice ms>``);
``on_expiry_notice`` marks each lot of that purchase due for notice by then ``noticed`` and makes
an ``ExpiryNotice`` per lot (what is left and when it expires: ``Decision.notices``), which the
worker sends as an EXPIRING notification (``stream.core.notices``). No entry: nothing moved. A
noticed lot is never due for notice again, so the notice is made once whatever the ticks; rewards
that join a lot after its notice (an event arriving late for that day) are not noticed again.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from stream.core.lifecycle import DAY_MS
from stream.core.money import format_minor
from stream.core.notices import ExpiryNotice
from stream.core.outcomes import Outcome
from stream.core.state import Lot, Share
from stream.core.working_copy import AccountStep, spendable_book

AVAILABLE = "AVAILABLE"
ENTRY_KIND = "AVAILABLE_EXPIRED"
REASON = "expired_unused"


def expires_at(available_ms: int, days: int) -> int:
    """The end of the UTC day ``days`` after the day of ``available_ms`` (epoch ms)."""
    return (available_ms // DAY_MS + days + 1) * DAY_MS


def _day(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms / 1000, tz=UTC).strftime("%Y-%m-%d")


def open_lot(step: AccountStep, ref: str, share: Share, amount: int) -> None:
    """``amount`` of ``share`` (purchase ``ref``) became AVAILABLE now: it joins the lot of its
    offer, unit and expiry, or opens one. Nothing for a reward that never expires."""
    if amount <= 0 or share.expiry_days is None or spendable_book(share) != AVAILABLE:
        return
    expires = expires_at(step.at_ms, share.expiry_days)
    notice = None if share.notice_days is None else expires - share.notice_days * DAY_MS
    lots = step.own_lots()
    for n, lot in enumerate(lots):
        if lot.offer_id == share.offer_id and lot.unit == share.currency and lot.expires_ms == expires:
            lots[n] = msgspec.structs.replace(lot, amount=lot.amount + amount, count=lot.count + 1)
            return
    lot = Lot(share.offer_id, share.version, share.reward_kind, share.currency, amount, step.at_ms, expires, notice, ref)
    at = len(lots)
    while at > 0 and (lots[at - 1].available_ms, lots[at - 1].expires_ms) > (lot.available_ms, lot.expires_ms):
        at -= 1  # oldest first (an event may come late)
    lots.insert(at, lot)


def consume(step: AccountStep, share: Share, amount: int) -> int:
    """Take up to ``amount`` out of the lots of ``share``'s offer and unit, the oldest first; what
    was taken (less when they hold less: the rest expired)."""
    pool = [n for n, lot in enumerate(step.lots) if lot.offer_id == share.offer_id and lot.unit == share.currency]
    if amount <= 0 or not pool:
        return 0
    lots = step.own_lots()
    taken = 0
    for field in ("amount", "redeemed"):  # what is left first; then what the customer redeemed (spent, not expired)
        for n in pool:
            lot = lots[n]
            part = min(getattr(lot, field), amount - taken)
            if part:
                lots[n] = msgspec.structs.replace(lot, **{field: getattr(lot, field) - part})
                taken += part
            if taken == amount:
                break
        if taken == amount:
            break
    for n in reversed(pool):
        if not (lots[n].amount or lots[n].redeemed):
            del lots[n]
    return taken


def on_available_expiry(step: AccountStep) -> Outcome:
    """Time passing: each lot opened by the event's purchase and due by its time expires."""
    ref, at = step.event.transaction_ref, step.at_ms
    due = [lot for lot in step.lots if lot.ref == ref and lot.expires_ms <= at]
    if not due:
        return Outcome.NO_CHANGE  # used up by clawbacks, or expired already
    step.lots = [lot for lot in step.own_lots() if not (lot.ref == ref and lot.expires_ms <= at)]
    due = [lot for lot in due if lot.amount > 0]  # a lot redeemed whole leaves nothing to expire
    if not due:
        return Outcome.NO_CHANGE
    for lot in due:
        terms = Share(
            offer_id=lot.offer_id,
            version=lot.version,
            rounding="down",
            reward_kind=lot.reward_kind,
            pending_days=0,
            accrue_on="",
            currency=lot.unit,
        )
        rewards = "1 reward" if lot.count == 1 else f"{lot.count} rewards"
        detail = (
            f"expired unused: {format_minor(lot.amount, lot.unit)} left of {rewards} made available on "
            f"{_day(lot.available_ms)} (first: purchase {lot.ref}), valid until {_day(lot.expires_ms - 1)} "
            f"({(lot.expires_ms - lot.available_ms // DAY_MS * DAY_MS) // DAY_MS - 1} days), first earned first expired"
        )
        step.entry(ENTRY_KIND, AVAILABLE, "EXPENSE", lot.amount, terms, REASON, detail)
    return Outcome.AVAILABLE_EXPIRED


def on_expiry_notice(step: AccountStep) -> Outcome:
    """Time passing: each lot opened by the event's purchase whose notice is due by the event's
    time, and not made yet, is noticed: the customer is told what is left of it and when it expires."""
    ref, at = step.event.transaction_ref, step.at_ms
    due = [
        n
        for n, lot in enumerate(step.lots)
        if lot.ref == ref and not lot.noticed and lot.notice_ms is not None and lot.notice_ms <= at < lot.expires_ms
    ]
    if not due:
        return Outcome.NO_CHANGE  # used up by clawbacks, or noticed already
    lots = step.own_lots()
    for n in due:
        lot = lots[n] = msgspec.structs.replace(lots[n], noticed=True)
        if lot.amount <= 0:  # redeemed whole: nothing left to expire, nothing to tell
            continue
        step.notices.append(
            ExpiryNotice(
                f"{step.event.event_id}#{lot.offer_id}:{lot.unit}",
                step.event.account_id,
                lot.offer_id,
                lot.reward_kind,
                lot.unit,
                lot.amount,
                at,
                lot.expires_ms,
            )
        )
    return Outcome.EXPIRY_NOTICED if step.notices else Outcome.NO_CHANGE
