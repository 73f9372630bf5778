"""What the abuse rules (``stream.core.abuse``) do to an account's rewards: a flagged reward is
HELD instead of becoming available, and operations release or forfeit it.

**Where a hold happens.** Wherever a reward would become spendable (AVAILABLE; DONATED for a
charity reward): at the end of its return window (``MADE_AVAILABLE``), at once at a clearing of
an offer without a return window, and a chargeback reversal credited at once. If a rule flags it
then, the amount goes to the HELD book instead, in an entry of kind ``HELD`` (a reversal's stays
``RECREDITED``) whose ``reason`` is the rule's name and whose ``detail`` gives the rule's figures:
``return window of 30 days over: held for review (refund_loop: 3 rewarded purchases refunded in the
30 days to 2026-12-31 10:00 UTC; rule: 3 or more)``. Nothing else is held: pending and confirmed
cashback is not spendable yet, and a reward already available when a rule fires stays available
(the customer may have spent it; the fraud team sees the flagged purchases in the ledger).

**When a reward is flagged**, judged at that moment, on what the account has seen by then:

- the purchase carries a flag (``Txn.hold``): it was part of a burst of small purchases at one
  merchant (set when the burst is seen, on every purchase of it), or bought at a merchant the
  cross-account scan flagged for this account (an ``HOLD_MERCHANT`` instruction: the account's
  purchases there whose reward is not available yet, and those it makes there until the flag ends);
- or the account is in a refund loop: ``min_refunds`` distinct rewarded purchases refunded in the
  ``window_days`` days up to that moment, and at least ``min_share_percent`` of the purchases
  rewarded in those days.

A purchase's flag wins over the account's loop (its reason is the one recorded). A flag stays with
its purchase, also if the rule is switched off later.

**Review** (``RELEASE_HOLD``, ``FORFEIT_HOLD``: instructions on their own topic, sent by the
operations routes of the API, decided here like any event of the account, so the account's state
and the ledger never disagree): a release moves what the purchase's shares hold (or the one share
named) from HELD to AVAILABLE (DONATED), and the purchase is never held again; a forfeit moves it
from HELD to EXPENSE, counted as clawed back (a later refund or chargeback takes nothing more), and
gives its cap and campaign budget back. Both name who and why in the entry's detail. A repeated
instruction, or one for a purchase with nothing held, changes nothing (``no_change``): the first
decision wins. A held reward still counts against caps and budgets: it is owed unless forfeited.

**Clawbacks** of a held reward (a refund, a chargeback) take from CONFIRMED first, then HELD, then
AVAILABLE. A purchase with a reward held is never forgotten at the transaction horizon
(``stream.core.lifecycle.settled``): its review may come any time.

**What the account remembers** (``AccountState.watch``, in its summary), bounded: the rewarded
purchases refunded, with their latest refund's time (kept two refund windows, at most 64), and how
many purchases were first rewarded each UTC day (two refund windows of days, at most 62); the
small purchases (kept two burst windows, at most 64); the merchants flagged for it (until their
flag ends, at most 32). Windows are judged on event times: a refund counts for a reward whose
moment is at or after the refund.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TypeVar

import msgspec

from stream.core.abuse import MERCHANT_CONCENTRATION, PURCHASE_BURST, REFUND_LOOP
from stream.core.events import Instruction
from stream.core.expiry import open_lot
from stream.core.lifecycle import DAY_MS
from stream.core.money import format_minor
from stream.core.outcomes import Outcome
from stream.core.state import Flag, MerchantWatch, Share, Txn, Watch
from stream.core.working_copy import AccountStep, purchase_basis, purchase_ref, spendable_book

MINUTE_MS = 60_000
HELD = "HELD"  # the book, and the kind of the entry that moves a reward into it
KEPT_REFUNDS = 64
KEPT_SMALL_PURCHASES = 64
KEPT_MERCHANTS = 32

T = TypeVar("T", bound=tuple)


def _utc(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


# --- watching: what an event tells the rules -----------------------------------------------------


def note_purchase(step: AccountStep, ref: str) -> None:
    """A new purchase (its transaction ``ref`` made by this step, at its approved authorisation or a
    clearing judged on its own): flagged if bought at a merchant the scan flagged for the account;
    a small one joins the account's small purchases and may complete a burst."""
    event = step.event
    txn = step.txns[ref]  # made by this step: its own to change
    merchant = event.merchant_id
    flagged = step.watch.merchants.get(merchant)
    if flagged is not None and flagged.until_ms >= step.at_ms and txn.hold is None:
        txn.hold = Flag(rule=MERCHANT_CONCENTRATION, detail=flagged.detail)
    rule = step.abuse.purchase_burst
    limit = rule.below_minor.get(txn.currency)
    if not rule.enabled or limit is None or purchase_basis(event) >= limit:
        return
    at = step.at_ms
    small = [*step.watch.small, (at, merchant, ref)]
    step.watch = _replace(step.watch, small=small)
    times = sorted((t, r) for t, m, r in small if m == merchant)
    width = rule.window_minutes * MINUTE_MS
    # The fullest window of that width holding this purchase: any burst it completes is one of them
    # (windows without it were judged when their purchases came).
    burst: list[tuple[int, str]] = []
    for start, _ in times:
        if at - width < start <= at:
            members = [(t, r) for t, r in times if start <= t < start + width]
            if len(members) > len(burst):
                burst = members
    if len(burst) < rule.min_purchases:
        return
    detail = (
        f"{len(burst)} purchases under {format_minor(limit, txn.currency)} at merchant {merchant} within "
        f"{rule.window_minutes} minutes, {_utc(burst[0][0])} to {_utc(burst[-1][0])}; rule: {rule.min_purchases} or more"
    )
    for _, member in burst:
        known = step.txns.get(member)
        if known is not None and known.hold is None:
            changed = step.txn(member)
            assert changed is not None
            changed.hold = Flag(rule=PURCHASE_BURST, detail=detail)


def note_refund(step: AccountStep) -> None:
    """A refund: of a rewarded purchase, it joins the account's refunds (refund loops)."""
    if not step.abuse.refund_loop.enabled:
        return
    ref = purchase_ref(step.event)
    txn = step.txns.get(ref)
    if txn is None or not any(share.earned > 0 for share in txn.shares):
        return  # not a rewarded purchase: nothing was earned to loop on
    at = step.at_ms
    latest = max([at, *(t for t, r in step.watch.refunds if r == ref)])
    refunds = [(t, r) for t, r in step.watch.refunds if r != ref]
    step.watch = _replace(step.watch, refunds=[*refunds, (latest, ref)])


def note_rewarded(step: AccountStep) -> None:
    """A purchase's first confirmed cashback: it counts among the account's rewarded purchases of
    its UTC day (the refund loop's share)."""
    if not step.abuse.refund_loop.enabled:
        return
    day = step.at_ms // DAY_MS
    step.watch = _replace(step.watch, rewarded={**step.watch.rewarded, day: step.watch.rewarded.get(day, 0) + 1})


def _replace(watch: Watch, **changes: object) -> Watch:
    fields = {"refunds": watch.refunds, "small": watch.small, "merchants": watch.merchants, "rewarded": watch.rewarded}
    return Watch(**{**fields, **changes})  # type: ignore[arg-type]


def remembered(step: AccountStep, clock_ms: int) -> Watch | None:
    """What the account keeps for the rules after the step: each list within its bounds (the very
    lists when nothing falls out: a watch is replaced, never changed in place)."""
    watch = step.watch
    loop, burst = step.abuse.refund_loop, step.abuse.purchase_burst
    refunds = _within(watch.refunds, clock_ms - 2 * loop.window_days * DAY_MS, KEPT_REFUNDS)
    small = _within(watch.small, clock_ms - 2 * burst.window_minutes * MINUTE_MS, KEPT_SMALL_PURCHASES)
    merchants = watch.merchants
    if merchants:
        live = sorted(((m, w) for m, w in merchants.items() if w.until_ms >= clock_ms), key=lambda mw: mw[1].until_ms)
        merchants = dict(live[-KEPT_MERCHANTS:])
    first_day = (clock_ms - 2 * loop.window_days * DAY_MS) // DAY_MS
    rewarded = watch.rewarded
    if rewarded and min(rewarded) < first_day:
        rewarded = {day: count for day, count in rewarded.items() if day >= first_day}
    if not (refunds or small or merchants or rewarded):
        return None
    if refunds is watch.refunds and small is watch.small and merchants is watch.merchants and rewarded is watch.rewarded:
        return watch
    return Watch(refunds=refunds, small=small, merchants=merchants, rewarded=rewarded)


def _within(items: list[T], since_ms: int, kept: int) -> list[T]:
    """The last ``kept`` of ``items`` (tuples, their time first) at or after ``since_ms``."""
    if not items or (len(items) <= kept and min(items)[0] >= since_ms):
        return items
    return [x for x in items if x[0] >= since_ms][-kept:]


# --- holding: where a reward would become spendable -----------------------------------------------


def hold_for(step: AccountStep, txn: Txn) -> Flag | None:
    """Why ``txn``'s reward is held if it became spendable now, or None."""
    if txn.hold is not None:
        return None if txn.hold.released else txn.hold
    rule = step.abuse.refund_loop
    if not rule.enabled:
        return None
    at = step.at_ms
    since = at - rule.window_days * DAY_MS
    refunded = len({ref for t, ref in step.watch.refunds if since < t <= at})
    if refunded < rule.min_refunds:
        return None
    # Purchases rewarded in the window, by the UTC day of their first confirmation (a refunded one may
    # have been rewarded before the window: the share is then capped at 100%).
    rewarded = max(refunded, sum(n for day, n in step.watch.rewarded.items() if since // DAY_MS < day <= at // DAY_MS))
    share = refunded * 100 // rewarded
    if share < rule.min_share_percent:
        return None
    detail = (
        f"{refunded} of {rewarded} rewarded purchases refunded ({share}%) in the {rule.window_days} days to {_utc(at)}; "
        f"rule: {rule.min_refunds} or more and {rule.min_share_percent}% or more"
    )
    return Flag(rule=REFUND_LOOP, detail=detail)


class Spent(msgspec.Struct, frozen=True, gc=False):
    available: int = 0
    held: int = 0


def spend(
    step: AccountStep, txn: Txn, share: Share, amount: int, debit: str, kind: str, reason: str, detail: str, cause: str
) -> Spent:
    """Move ``amount`` of ``share`` from ``debit`` to where spendable cashback goes: AVAILABLE
    (DONATED for charity) as ``kind`` with ``reason`` and ``detail``, or HELD when a rule flags it
    (``cause``: what made it spendable, the start of the held entry's detail)."""
    if amount <= 0:
        return Spent()
    flag = hold_for(step, txn)
    if flag is None:
        step.entry(kind, debit, spendable_book(share), amount, share, reason, detail)
        share.available += amount
        open_lot(step, purchase_ref(step.event), share, amount)  # points and store credit that expire
        return Spent(available=amount)
    held_kind = HELD if kind == "MADE_AVAILABLE" else kind
    step.entry(held_kind, debit, HELD, amount, share, flag.rule, f"{cause}: held for review ({flag.rule}: {flag.detail})")
    share.held += amount
    share.held_for = flag.rule
    return Spent(held=amount)


# --- review: the instructions of operations -----------------------------------------------------


def _instruction(step: AccountStep) -> Instruction:
    note = step.event.note
    assert isinstance(note, Instruction)  # an instruction event always carries one (stream.core.events.to_event)
    return note


def on_release_hold(step: AccountStep) -> Outcome:
    return _review(step, release=True)


def on_forfeit_hold(step: AccountStep) -> Outcome:
    return _review(step, release=False)


def _review(step: AccountStep, release: bool) -> Outcome:
    note = _instruction(step)
    ref = step.event.transaction_ref
    known = step.txns.get(ref)
    if known is None:
        return Outcome.UNKNOWN_TRANSACTION
    if not any(s.held > 0 and note.offer_id in (None, s.offer_id) for s in known.shares):
        return Outcome.NO_CHANGE  # never held, or reviewed already: the first decision stands
    txn = step.txn(ref)
    assert txn is not None
    held = [s for s in txn.shares if s.held > 0 and note.offer_id in (None, s.offer_id)]
    for share in held:
        amount, rule = share.held, share.held_for or "review"
        if release:
            detail = f"released after review by {note.actor}: {note.reason}"
            step.entry("HOLD_RELEASED", HELD, spendable_book(share), amount, share, rule, detail)
            share.available += amount
            open_lot(step, ref, share, amount)
        else:
            detail = f"forfeited after review by {note.actor}: {note.reason}"
            step.entry("HOLD_FORFEITED", HELD, "EXPENSE", amount, share, rule, detail)
            step.hold(share, -amount)  # its cap period and campaign budget get it back
            share.clawed_back += amount
        share.held = 0
    if release and all(s.held == 0 for s in txn.shares):
        txn.hold = Flag(rule=held[0].held_for or "review", detail=f"released by {note.actor}: {note.reason}", released=True)
    return Outcome.HOLD_RELEASED if release else Outcome.HOLD_FORFEITED


def on_hold_merchant(step: AccountStep) -> Outcome:
    """The cross-account scan flagged a merchant for this account (``stream.abuse_scan``): its
    purchases there whose reward is not spendable yet are flagged, and so are those it makes there
    until the flag ends."""
    note = _instruction(step)
    merchant = step.event.merchant_id
    until = note.until_ms if note.until_ms is not None else step.at_ms
    merchants = {**step.watch.merchants, merchant: MerchantWatch(until, note.reason)}
    step.watch = _replace(step.watch, merchants=merchants)
    waiting = [
        ref
        for ref, txn in step.txns.items()
        if txn.merchant_id == merchant and txn.hold is None and any(s.pending > 0 or s.confirmed > 0 for s in txn.shares)
    ]
    for ref in waiting:
        txn = step.txn(ref)
        assert txn is not None
        txn.hold = Flag(rule=MERCHANT_CONCENTRATION, detail=note.reason)
    return Outcome.FLAGGED
