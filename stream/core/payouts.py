"""Cash payouts (issue 12, part 1): AVAILABLE cash paid out to the customer's bank account.

**The wallet.** The account's state keeps its AVAILABLE book per reward kind and unit
(``AccountState.wallet``, ``"CASH:EUR": 2500``), moved by every entry into or out of AVAILABLE in
the one place entries are made (``stream.core.working_copy.AccountStep.entry``): made available, a
hold released, clawed back, recredited, expired, paid out, a payout returned. The transactions are
forgotten at the horizon (``stream.core.memory``), the wallet is not: it is what the engine knows of
the account's spendable money, decided in the same order as every other event of the account, so a
payout never races a clawback or an expiry (the ledger lags the worker; the worker never pays from it).

**A payout run** (``PAYOUT_RUN``, one event per account, id ``payout-run:<run id>:<account>``): for
each currency whose cash in the wallet is at or above the run's minimum for it (at least one minor
unit), one entry ``PAID_OUT`` moves all of it from AVAILABLE to the PAID_OUT book, and the payout is
asked of the bank's core banking system. Its payout id is
``p:<run id>:<account>:<currency>``: a redelivered or repeated run is the same event (nothing
decided twice, its entries re-emitted) and a payout id the account keeps is never paid again. What the
bank is asked (``PayoutOrder``) is made from the PAID_OUT entry (``orders_of``): a redelivery asks again
under the same payout id, which the bank takes once. Points, store credit and
charity rewards are never paid out. Cash clawed back after a payout can leave AVAILABLE negative:
the next run pays nothing in that currency until it is back at or above the minimum.

**The answer** (``PAYOUT_RESULT``): CONFIRMED moves no money (it stays in PAID_OUT); REJECTED (with
the bank's reason code) returns it, ``PAYOUT_RETURNED`` PAID_OUT -> AVAILABLE. The first answer
stands: another answer for the same payout (a rejection after a confirmation, or a repeat) changes
nothing (``no_change``), an answer for a payout the account does not have changes nothing
(``unknown_transaction``). The account keeps its open payouts and its last ``KEPT_ANSWERED``
answered ones. A confirmation tells the customer (a ``PaidNotice``: PAID), again when it is redelivered
(``paid_again``: the same notice id), so at least once.

**A wallet not known.** A state stored before wallets were kept has none (``wallet`` None): a run
skips it (``wallet_unknown``), never paying from a guess. An operator opens it (``cashback payouts
open-wallets``: an ``OPEN_WALLET`` event) with the ledger's AVAILABLE balances of the account and the ledger's
latest entry of it: applied, decided in order with the account's events, only when that entry is the
latest entry the worker made for the account (among its recent events), so the ledger held every
entry the wallet would have counted; otherwise ``ledger_behind``, nothing changes, and the operator
asks again once the sink has caught up. When none of the account's recent events moved money there is
nothing to check against (its entries are older than what the worker remembers): the opening then
makes a ``WALLET_MARK`` line (no books, no amount; ``wallet_marked``), which reaches the ledger after
every earlier record of the account, and the next opening, carrying the ledger's latest mark, is
checked against it as against an entry (``latest_place``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec

from stream.core.entries import WALLET_MARK, Entry, moves_money
from stream.core.events import (
    DAY_MS,
    CardEvent,
    EventType,
    PayoutAnswer,
    PayoutRun,
    WalletOpening,
    note_event,
    to_event,
    validate,
)
from stream.core.money import format_minor
from stream.core.notices import PaidNotice
from stream.core.outcomes import Outcome
from stream.core.payout_messages import PAYOUT_ANSWERS
from stream.core.state import AccountState, Payout, Recent
from stream.core.working_copy import AccountStep

PAID_OUT = "PAID_OUT"  # the book, and the kind of the entry that moves cash into it
PAYOUT_RETURNED = "PAYOUT_RETURNED"  # a rejected payout's cash back to AVAILABLE
AVAILABLE = "AVAILABLE"
CASH = "CASH"
REQUESTED = "REQUESTED"
CONFIRMED = "CONFIRMED"
REJECTED = "REJECTED"
ANSWERS = PAYOUT_ANSWERS
KEPT_ANSWERED = 64  # answered payouts an account keeps (a second answer to them is recognised)
MARK_UNIT = "XXX"  # ISO 4217's "no currency": a wallet mark moves nothing


def payout_id(run_id: str, account_id: str, currency: str) -> str:
    """A payout's id: one per run, account and currency, the same whoever computes it."""
    return f"p:{run_id}:{account_id}:{currency}"


def run_id_at(at: datetime) -> str:
    """The id of the run scheduled at ``at`` (UTC, to the minute, ``2026-12-03T0200Z``): every worker and
    partition agrees."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H%MZ")


class PayoutOrder(msgspec.Struct, frozen=True, gc=False):
    """What the bank's core banking system is asked to pay (the ``payout_instruction`` record): made from
    a PAID_OUT entry, so a redelivered run, which re-emits its entries, asks again with the same payout id."""

    payout_id: str
    account_id: str
    amount_minor: int
    currency: str
    run_id: str
    requested_at: int  # epoch ms: the run's time on the account's clock

    def record(self) -> dict[str, Any]:
        return msgspec.structs.asdict(self)


def orders_of(entries: Iterable[Entry]) -> list[PayoutOrder]:
    """The payouts asked by these entries (their PAID_OUT entries), in order."""
    return [
        PayoutOrder(
            e.transaction_ref, e.account_id, e.amount_minor, e.currency, e.transaction_ref.split(":", 2)[1], e.occurred_at
        )
        for e in entries
        if e.entry_kind == PAID_OUT
    ]


def latest_run_ms(schedule: tuple[int, ...], now_ms: int) -> int | None:
    """The latest scheduled run at or before ``now_ms`` (epoch ms), ``schedule`` being minutes after
    midnight UTC, every day (PAYOUT_SCHEDULE); None: no schedule."""
    if not schedule:
        return None
    day = now_ms - now_ms % DAY_MS
    today = [day + minute * 60_000 for minute in schedule if day + minute * 60_000 <= now_ms]
    return max(today) if today else day - DAY_MS + max(schedule) * 60_000


def has_cash(wallet: Mapping[str, int] | None) -> bool:
    """Whether an account's wallet holds cash (more than zero in some currency): a scheduled run asks it."""
    return wallet is not None and any(amount > 0 and key.startswith("CASH:") for key, amount in wallet.items())


def would_pay(state: AccountState | None, minimums: Mapping[str, int], default_minimum_minor: int | None) -> bool:
    """Whether a run with these minimums would pay the account something (a scheduled run asks only
    those: an account under every minimum is not made to decide, and remember, a run that pays nothing)."""
    cash = cash_available(state) or {}
    for currency, amount in cash.items():
        minimum = minimums.get(currency, default_minimum_minor)
        if minimum is not None and amount >= max(1, minimum):
            return True
    return False


def wallet_key(reward_kind: str, unit: str) -> str:
    return f"{reward_kind}:{unit}"


def cash_available(state: AccountState | None) -> dict[str, int] | None:
    """The account's AVAILABLE cash per currency (None: its wallet is not known)."""
    if state is None:
        return {}
    if state.wallet is None:
        return None
    return {key[len(CASH) + 1 :]: amount for key, amount in state.wallet.items() if key.startswith(f"{CASH}:")}


def payout_run_event(
    account_id: str,
    run_id: str,
    at: datetime,
    minimums: Mapping[str, int],
    default_minimum_minor: int | None = None,
) -> CardEvent:
    """The event of run ``run_id`` for one account, at ``at`` (its time on the account's clock).
    ``minimums``: the least cash AVAILABLE paid out per currency (minor units, at least 1)."""
    record = {
        "run_id": run_id,
        "account_id": account_id,
        "requested_at": at,
        "minimums": [{"currency": c, "minimum_minor": m} for c, m in minimums.items()],
        "default_minimum_minor": default_minimum_minor,
    }
    rejection = validate(record)
    if rejection is not None:
        raise ValueError(f"a payout run: {rejection.detail()}")
    return to_event(record)


def payout_result_event(account_id: str, pid: str, status: str, at: datetime, reason_code: str = "") -> CardEvent:
    """The bank's answer to payout ``pid`` of ``account_id``: CONFIRMED or REJECTED (its reason code)."""
    record = {"payout_id": pid, "account_id": account_id, "status": status, "reason_code": reason_code or None, "answered_at": at}
    rejection = validate(record)
    if rejection is not None:
        raise ValueError(f"a payout answer: {rejection.detail()}")
    return to_event(record)


def open_wallet_event(
    account_id: str,
    event_id: str,
    at: datetime,
    actor: str,
    last_accrual_id: str | None,
    available: Iterable[tuple[str, str, int]],
    last_mark_id: str | None = None,
) -> CardEvent:
    """An operator's opening of the account's wallet from the ledger (``WalletOpening``)."""
    note = WalletOpening(actor, last_accrual_id, tuple(sorted(available)), last_mark_id)
    return note_event(event_id, EventType.OPEN_WALLET, account_id, at, f"wallet:{account_id}", "EUR", note)


# --- the engine's handlers (stream.core.rules) ---------------------------------------------------


def on_payout_run(step: AccountStep) -> Outcome:
    note = step.event.note
    assert isinstance(note, PayoutRun)
    wallet = step.wallet
    if wallet is None:
        return Outcome.WALLET_UNKNOWN
    minimums = dict(note.minimums)
    account = step.event.account_id
    paid = 0
    for key in sorted(wallet):
        kind, _, unit = key.partition(":")
        if kind != CASH:
            continue
        minimum = minimums.get(unit, note.default_minimum_minor)
        amount = wallet[key]
        if minimum is None or amount < max(1, minimum):
            continue
        pid = payout_id(note.run_id, account, unit)
        if pid in step.payouts:  # this run paid this currency already
            continue
        detail = (
            f"paid out {format_minor(amount, unit)} to the customer's bank account "
            f"(payout {pid}, run {note.run_id}; minimum {format_minor(max(1, minimum), unit)})"
        )
        step.entry(PAID_OUT, AVAILABLE, PAID_OUT, amount, None, "paid_out", detail, about=(pid, unit))
        step.own_payouts()[pid] = Payout(amount, unit, note.run_id, step.at_ms)
        paid += 1
    return Outcome.PAID_OUT if paid else Outcome.NOTHING_TO_PAY


def on_payout_result(step: AccountStep) -> Outcome:
    note = step.event.note
    assert isinstance(note, PayoutAnswer)
    pid = note.payout_id
    payout = step.payouts.get(pid)
    if payout is None:
        return Outcome.UNKNOWN_TRANSACTION
    if payout.status != REQUESTED or note.status not in ANSWERS:
        return Outcome.NO_CHANGE  # the first answer stands
    payouts = step.own_payouts()
    payouts[pid] = msgspec.structs.replace(payout, status=note.status, answered_by=step.event.event_id)
    _forget_answered(payouts)
    if note.status == CONFIRMED:
        step.notices.append(_paid(step.event, payout))
        return Outcome.PAYOUT_CONFIRMED
    reason = note.reason_code or "rejected"
    detail = (
        f"payout {pid} of run {payout.run_id} rejected by the bank ({reason}): "
        f"{format_minor(payout.amount, payout.currency)} back to AVAILABLE"
    )
    step.entry(PAYOUT_RETURNED, PAID_OUT, AVAILABLE, payout.amount, None, reason, detail, about=(pid, payout.currency))
    return Outcome.PAYOUT_REJECTED


def _paid(event: CardEvent, payout: Payout) -> PaidNotice:
    return PaidNotice(f"{event.event_id}#paid", event.account_id, payout.amount, payout.currency, event.occurred_at_ms)


def paid_again(event: CardEvent, state: AccountState) -> tuple[PaidNotice, ...]:
    """A redelivered confirmation's PAID notice (the same id): it tells the customer at least once,
    like the entries a redelivered event re-emits. () for any other redelivered event."""
    note = event.note
    if event.event_type is not EventType.PAYOUT_RESULT or not isinstance(note, PayoutAnswer):
        return ()
    payout = state.payouts.get(note.payout_id)
    if payout is None or payout.status != CONFIRMED or payout.answered_by != event.event_id:
        return ()
    return (_paid(event, payout),)


def _forget_answered(payouts: dict[str, Payout]) -> None:
    answered = [pid for pid, payout in payouts.items() if payout.status != REQUESTED]
    for pid in answered[: max(0, len(answered) - KEPT_ANSWERED)]:
        del payouts[pid]


def on_open_wallet(step: AccountStep) -> Outcome:
    note = step.event.note
    assert isinstance(note, WalletOpening)
    if step.wallet is not None:
        return Outcome.NO_CHANGE  # known already: the worker's own count stands
    latest = latest_place(step)
    if latest is None:  # nothing recent to check the ledger against: mark the place for the next opening
        detail = (
            f"wallet opening asked by {note.actor} not checked: none of the account's recent events moved money; "
            "this mark is the place the next opening is checked against"
        )
        step.entry(WALLET_MARK, "NONE", "NONE", 0, None, "wallet_mark", detail, about=(step.event.event_id, MARK_UNIT))
        return Outcome.WALLET_MARKED
    kind, accrual_id = latest
    if accrual_id != (note.last_mark_id if kind == WALLET_MARK else note.last_accrual_id):
        return Outcome.LEDGER_BEHIND
    step.wallet = {wallet_key(kind, unit): amount for kind, unit, amount in note.available if amount}
    return Outcome.WALLET_OPENED


def latest_place(step: AccountStep) -> tuple[str, str] | None:
    """The kind and id of the latest ledger entry or wallet mark the worker made for the account among
    its recent events (None: none of them moved money or marked the place). The ledger holds it only
    once it holds every earlier record of the account: an account's records share a partition of the
    accruals topic, which the sink writes in order, and a decision is forgotten only once its records
    were delivered (``stream.outbox``)."""
    holder = place_holder(step.recent)
    if holder is None:
        return None
    entry = next(e for e in reversed(step.recent[holder].entries) if _places(e))
    return entry.entry_kind, entry.accrual_id


def place_holder(recent: dict[str, Recent]) -> str | None:
    """The recent event holding the account's latest place (``latest_place``), None when none does: the
    worker keeps it among the recent events once its entries are delivered, when it lets go of the others
    (``stream.account_states``), so that the place a wallet opening is checked against stays the same."""
    for event_id, held in reversed(recent.items()):
        if any(_places(entry) for entry in held.entries):
            return event_id
    return None


def _places(entry: Entry) -> bool:
    return moves_money(entry.entry_kind) or entry.entry_kind == WALLET_MARK
