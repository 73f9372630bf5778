"""Redemptions of points and store credit (issue 12): the customer spends AVAILABLE points or store
credit through the API, with an idempotency key; a redemption above the balance is refused.

**Who decides.** Not the API: it sends a REDEEM instruction (``stream.core.redemption_messages``, on the
instructions topic keyed by account) and the worker owning the account decides it here, in the account's
order, against its wallet (``AccountState.wallet``, AVAILABLE per kind and unit, kept by every entry:
``stream.core.payouts``). So a redemption never races a clawback, an expiry or another redemption: the
ledger lags the worker, and the worker never spends from it.

**Once.** The event's id is the redemption id ``r:<account>:<key>``, and its fingerprint is the request
(kind, unit, amount, reference), not its time (``CardEvent.fingerprint``): a retried POST, or a redelivered
instruction, is the same event, decided once (its entries re-emitted while it is among the recent events);
the same key with another request is a ``duplicate_conflict`` (dead-lettered; the first decision stands,
and the API, which compares the request with the ledger's record of it, answers 409).

**Redeemed** (the wallet holds at least the amount): one entry ``REDEEMED`` moves the amount from
AVAILABLE to the REDEEMED book (the customer's: what they have spent), reason ``redeemed``, ref the
redemption id. One entry, not one per offer: a redemption is the customer's act on their balance of a
kind and unit, like a payout on their cash, and most of that balance has no offer attached once it is
AVAILABLE (offers without an expiry keep no lots); nothing goes back to a sponsor's EXPENSE book (the
sponsor funded the reward when it was earned), so no sponsor is named (``sponsor_id`` and ``offer_id``
null, as for a payout). What it took is in the explanation: it takes from the expiring lots of its kind
and unit first, the oldest first (``take_from_lots``: first earned first used, so an expiry never expires
what was spent, and what was spent is never spent again), then from the rewards that never expire; the
detail names each lot (offer, day it became available, last valid day) and the remainder, e.g.
``redeemed 500 PTS: 300 PTS of dining-points made available on 2026-12-15 (valid until 2027-12-15),
200 PTS not expiring; 150 PTS left available (asked: POINTS 500 PTS, reference gift-card-25)``.

**Refused**: a zero-amount line ``REDEMPTION_REFUSED`` (books NONE, like NOT_EARNED), reason
``insufficient_balance`` (the wallet holds less: the detail says how much) or ``wallet_unknown`` (a state
stored before wallets were kept: never spent from a guess; ``cashback payouts open-wallets`` opens it), the
requested amount its basis. Nothing moves; a later request with another key may succeed.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from stream.core.entries import REDEMPTION_REFUSED
from stream.core.events import Redemption
from stream.core.lifecycle import DAY_MS
from stream.core.money import format_minor
from stream.core.outcomes import Outcome
from stream.core.redemption_messages import request_tag
from stream.core.state import Lot
from stream.core.working_copy import AccountStep

REDEEMED = "REDEEMED"  # the book, and the kind of the entry that moves points or store credit into it
AVAILABLE = "AVAILABLE"
INSUFFICIENT_BALANCE = "insufficient_balance"
WALLET_UNKNOWN = "wallet_unknown"
LOTS_NAMED = 5  # lots an explanation names one by one (the rest are counted)


def take_from_lots(step: AccountStep, reward_kind: str, unit: str, amount: int) -> list[tuple[Lot, int]]:
    """Take up to ``amount`` out of the lots of ``reward_kind`` and ``unit``, whatever their offer, the oldest
    first, moving it from each lot's ``amount`` to its ``redeemed``; each lot taken from (as it was) and how
    much. A lot emptied stays, for a refund of its purchase to take back what was redeemed of it."""
    taken: list[tuple[Lot, int]] = []
    if amount <= 0 or not any(lot.reward_kind == reward_kind and lot.unit == unit and lot.amount for lot in step.lots):
        return taken
    lots = step.own_lots()
    left = amount
    for n, lot in enumerate(lots):
        if lot.reward_kind != reward_kind or lot.unit != unit or lot.amount <= 0:
            continue
        part = min(lot.amount, left)
        lots[n] = msgspec.structs.replace(lot, amount=lot.amount - part, redeemed=lot.redeemed + part)
        taken.append((lot, part))
        left -= part
        if not left:
            break
    return taken


def _day(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms / 1000, tz=UTC).strftime("%Y-%m-%d")


def _what(taken: list[tuple[Lot, int]], rest: int, unit: str) -> str:
    parts = [
        f"{format_minor(part, unit)} of {lot.offer_id} made available on {_day(lot.available_ms)} "
        f"(valid until {_day(lot.expires_ms - DAY_MS)})"
        for lot, part in taken[:LOTS_NAMED]
    ]
    if len(taken) > LOTS_NAMED:
        more = sum(part for _, part in taken[LOTS_NAMED:])
        parts.append(f"{format_minor(more, unit)} of {len(taken) - LOTS_NAMED} later lots")
    if rest:
        parts.append(f"{format_minor(rest, unit)} not expiring")
    return ", ".join(parts)


def on_redeem(step: AccountStep) -> Outcome:
    event = step.event
    note = event.note
    assert isinstance(note, Redemption)
    kind, unit, amount = note.reward_kind, event.billing_currency, note.amount_minor
    tag = request_tag(kind, amount, unit, note.reference)
    about = (event.event_id, unit)
    asked = format_minor(amount, unit)
    if step.wallet is None:
        detail = f"redemption of {asked} refused: the account's balance is not known to the worker yet {tag}"
        step.entry(REDEMPTION_REFUSED, "NONE", "NONE", 0, None, WALLET_UNKNOWN, detail, amount, about=about, reward_kind=kind)
        return Outcome.REDEMPTION_REFUSED
    available = step.wallet.get(f"{kind}:{unit}", 0)
    if available < amount:
        detail = f"redemption of {asked} refused: {format_minor(available, unit)} available {tag}"
        step.entry(
            REDEMPTION_REFUSED, "NONE", "NONE", 0, None, INSUFFICIENT_BALANCE, detail, amount, about=about, reward_kind=kind
        )
        return Outcome.REDEMPTION_REFUSED
    taken = take_from_lots(step, kind, unit, amount)
    rest = amount - sum(part for _, part in taken)
    detail = f"redeemed {asked}: {_what(taken, rest, unit)}; {format_minor(available - amount, unit)} left available {tag}"
    step.entry(REDEEMED, AVAILABLE, REDEEMED, amount, None, "redeemed", detail, amount, about=about, reward_kind=kind)
    return Outcome.REDEEMED
