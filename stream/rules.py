"""The rules engine: ``decide(event, offers, state) -> Decision``. Pure: no I/O, no clock, no await.

The same function runs in the matcher agent, the tests' oracle and (later) the back-test.

State is one account's: its open transactions and the events it has already seen. It is a plain
JSON-shaped dict so the worker's table can store it as is; ``decide`` never mutates the state it is
given, it returns a new one.

Every money movement is an entry: ``amount_minor`` moves from ``debit_book`` to ``credit_book``,
so an entry's legs sum to zero by construction (a TigerBeetle-style transfer). Books:

- EXPENSE: the sponsor's cashback expense for the offer (the bank's side);
- PENDING: authorised, not yet settled; CONFIRMED: settled, inside the return window;
- AVAILABLE: the customer can use it.

Entry ids are ``<event_id>#<n>``: a replayed event produces the same ids, so the ledger's unique
key makes a replay a no-op.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Iterable

from stream.events import CardEvent, EventType
from stream.money import Rounding, apply_rate, format_minor, prorate
from stream.offers import ALWAYS_EXCLUDED_MCCS, AccrueOn, Offer, OfferBook

# How many recent event ids an account remembers, with what they produced. A redelivery inside
# this window re-emits the same entries (harmless downstream) and never re-applies the event.
SEEN_EVENTS_LIMIT = 200

NON_PURCHASE_CODES = frozenset({"QUASI_CASH", "CASH_WITHDRAWAL", "REFUND"})

State = dict[str, Any]
Entry = dict[str, Any]


class Outcome(str, enum.Enum):
    """What one event did. Values are the ``outcome`` label of ``cashback_decisions_total`` and the
    ``reason`` of NOT_EARNED records."""

    EARNED = "earned"
    MATCHED_ACCRUES_ON_CLEARING = "matched_accrues_on_clearing"
    ADJUSTED = "adjusted"
    RELEASED = "released"
    EXPIRED = "expired"
    CONFIRMED = "confirmed"
    CLAWED_BACK = "clawed_back"
    RECREDITED = "recredited"
    NO_CHANGE = "no_change"
    DECLINED = "declined"
    NOT_A_PURCHASE = "not_a_purchase"
    EXCLUDED_MCC = "excluded_mcc"
    NO_MATCHING_OFFER = "no_matching_offer"
    BELOW_MIN_SPEND = "below_min_spend"
    UNKNOWN_TRANSACTION = "unknown_transaction"
    ALREADY_SETTLED = "already_settled"
    DUPLICATE = "duplicate"
    DUPLICATE_CONFLICT = "duplicate_conflict"


@dataclass(frozen=True, slots=True)
class Decision:
    state: State
    entries: tuple[Entry, ...]
    outcome: Outcome


def new_state() -> State:
    return {"seen": {}, "txns": {}}


def decide(event: CardEvent, offers: OfferBook, state: State | None) -> Decision:
    """Apply one card event to one account's state; return the new state, the ledger entries and
    the outcome."""
    state = state or new_state()
    fingerprint = event.fingerprint()
    seen = state["seen"].get(event.event_id)
    if seen is not None:
        if seen[0] == fingerprint:
            return Decision(state, tuple(seen[1]), Outcome.DUPLICATE)
        return Decision(state, (), Outcome.DUPLICATE_CONFLICT)

    step = _Step(event, state["txns"])
    outcome = _HANDLERS[event.event_type](step, offers)

    seen_events = dict(state["seen"])
    seen_events[event.event_id] = [fingerprint, step.entries]
    while len(seen_events) > SEEN_EVENTS_LIMIT:
        del seen_events[next(iter(seen_events))]
    return Decision({"seen": seen_events, "txns": step.txns}, tuple(step.entries), outcome)


class _Step:
    """The working copy for one event: copies the transactions it touches, collects entries."""

    def __init__(self, event: CardEvent, txns: dict[str, Any]) -> None:
        self.event = event
        self.txns = txns  # replaced by a copy on first write
        self._copied = False
        self.entries: list[Entry] = []

    def txn(self, ref: str) -> dict[str, Any] | None:
        txn = self.txns.get(ref)
        if txn is None:
            return None
        return self.put(ref, {**txn, "shares": [dict(share) for share in txn["shares"]]})

    def put(self, ref: str, txn: dict[str, Any]) -> dict[str, Any]:
        if not self._copied:
            self.txns = dict(self.txns)
            self._copied = True
        self.txns[ref] = txn
        return txn

    def entry(
        self,
        kind: str,
        debit: str,
        credit: str,
        amount_minor: int,
        share: dict[str, Any] | None,
        reason: str,
        detail: str,
        basis_minor: int = 0,
        force_post: bool = False,
    ) -> None:
        if kind != "NOT_EARNED" and amount_minor <= 0:
            return
        event = self.event
        self.entries.append(
            {
                "accrual_id": f"{event.event_id}#{len(self.entries)}",
                "source_event_id": event.event_id,
                "account_id": event.account_id,
                "transaction_ref": event.transaction_ref,
                "entry_kind": kind,
                "debit_book": debit,
                "credit_book": credit,
                "amount_minor": amount_minor,
                "currency": share["currency"] if share else event.billing_currency,
                "reward_kind": share["reward_kind"] if share else "CASH",
                "offer_id": share["offer_id"] if share else None,
                "rule_version": share["version"] if share else None,
                "occurred_at": event.occurred_at_ms,
                "explanation": {
                    "reason": reason,
                    "detail": detail,
                    "basis_minor": basis_minor,
                    "basis_currency": event.billing_currency,
                    "rate_bps": share["rate_bps"] if share else 0,
                    "rounding": share["rounding"] if share else Rounding.DOWN.value,
                    "carried_remainder": 0,
                    "force_post": force_post,
                },
            }
        )

    def not_earned(self, outcome: Outcome, detail: str) -> Outcome:
        self.entry("NOT_EARNED", "NONE", "NONE", 0, None, outcome.value, detail, purchase_basis(self.event))
        return outcome


# --- arithmetic ---------------------------------------------------------------------------------


def purchase_basis(event: CardEvent) -> int:
    """The billing amount that can earn cashback: the cash handed over at the till never does.

    DE54 is in the transaction currency; its share of the billing amount is prorated, rounded down.
    """
    if event.cashback_at_pos_minor <= 0 or event.amount_minor <= 0:
        return event.billing_amount_minor
    goods_minor = event.amount_minor - event.cashback_at_pos_minor
    return prorate(event.billing_amount_minor, goods_minor, event.amount_minor)


def _reward(share: dict[str, Any], basis_minor: int) -> int:
    reward = apply_rate(basis_minor, share["rate_bps"], Rounding(share["rounding"])).reward_minor
    if share["max_reward_minor"] is not None:
        reward = min(reward, share["max_reward_minor"])
    return reward


def _rate_detail(share: dict[str, Any], basis_minor: int, reward_minor: int) -> str:
    rate = share["rate_bps"]
    cap = "" if share["max_reward_minor"] is None else f", at most {format_minor(share['max_reward_minor'], share['currency'])}"
    return (
        f"{rate // 100}.{rate % 100:02d}% of {format_minor(basis_minor, share['currency'])} = "
        f"{format_minor(reward_minor, share['currency'])} (rounded {share['rounding'].replace('_', ' ')}{cap})"
    )


# --- matching -----------------------------------------------------------------------------------


def _purchase_rejection(event: CardEvent) -> Outcome | None:
    if not event.approved:
        return Outcome.DECLINED
    if event.processing_code in NON_PURCHASE_CODES:
        return Outcome.NOT_A_PURCHASE
    if event.mcc in ALWAYS_EXCLUDED_MCCS:
        return Outcome.EXCLUDED_MCC
    return None


def _offer_applies(offer: Offer, event: CardEvent) -> bool:
    at = event.occurred_at
    return (
        (offer.valid_from is None or at >= offer.valid_from)
        and (offer.valid_to is None or at < offer.valid_to)
        and (offer.mccs.empty or event.mcc in offer.mccs)
        and (not offer.merchant_ids or event.merchant_id in offer.merchant_ids)
        and (not offer.channels or event.channel in offer.channels)
        and (not offer.merchant_countries or event.merchant_country in offer.merchant_countries)
        and (offer.currency is None or offer.currency == event.billing_currency)
    )


def _new_share(offer: Offer, currency: str) -> dict[str, Any]:
    return {
        "offer_id": offer.offer_id,
        "version": offer.version,
        "rate_bps": offer.rate_bps,
        "rounding": offer.rounding.value,
        "reward_kind": offer.reward_kind.value,
        "max_reward_minor": offer.max_reward_per_txn_minor,
        "pending_days": offer.pending_days,
        "accrue_on": offer.accrue_on.value,
        "currency": currency,
        "pending": 0,  # now in PENDING
        "confirmed": 0,  # now in CONFIRMED
        "available": 0,  # now in AVAILABLE
        "earned": 0,  # ever confirmed
        "clawed_back": 0,  # ever clawed back (refunds and chargebacks)
        "refund_clawed": 0,
        "chargeback_clawed": 0,
    }


def _match(event: CardEvent, offers: OfferBook) -> tuple[list[dict[str, Any]], Outcome]:
    """The shares a purchase earns under: the most valuable non-stackable offer (ties: the most
    recent) plus every stackable one. Returns ([], reason) when none."""
    rejection = _purchase_rejection(event)
    if rejection is not None:
        return [], rejection
    basis = purchase_basis(event)
    candidates = [o for o in offers.offers if _offer_applies(o, event)]
    candidates = [o for o in candidates if event.mcc not in o.excluded_mccs]
    if not candidates:
        return [], Outcome.NO_MATCHING_OFFER
    eligible = [o for o in candidates if basis >= o.min_spend_minor]
    if not eligible:
        return [], Outcome.BELOW_MIN_SPEND
    shares = [_new_share(o, event.billing_currency) for o in eligible]
    stackable = [s for s, o in zip(shares, eligible) if o.stackable]
    exclusive = [(s, o) for s, o in zip(shares, eligible) if not o.stackable]
    if exclusive:

        def rank(pair: tuple[dict[str, Any], Offer]) -> tuple[int, float, int]:
            share, offer = pair
            recency = offer.valid_from.timestamp() if offer.valid_from else 0.0
            return (_reward(share, basis), recency, offer.version)

        stackable.insert(0, max(exclusive, key=rank)[0])
    return stackable, Outcome.EARNED


def _new_txn(event: CardEvent, shares: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {
        "status": status,  # authorized | clearing | cleared | expired
        "currency": event.billing_currency,
        "authorized_basis": 0,
        "cleared_basis": 0,
        "refunded_basis": 0,
        "force_post": False,
        "shares": shares,
    }


# --- handlers, one per event type ---------------------------------------------------------------


def _set_pending(step: _Step, txn: dict[str, Any], kind: str) -> bool:
    """Move each share's pending cashback to what the authorised basis now earns."""
    changed = False
    for share in txn["shares"]:
        target = 0 if share["accrue_on"] == AccrueOn.CLEARING.value else _reward(share, txn["authorized_basis"])
        delta = target - share["pending"]
        detail = _rate_detail(share, txn["authorized_basis"], target)
        if delta > 0:
            step.entry(kind, "EXPENSE", "PENDING", delta, share, "earned", f"pending {detail}", txn["authorized_basis"])
        elif delta < 0:
            step.entry("PENDING_RELEASED", "PENDING", "EXPENSE", -delta, share, "released", f"pending now {detail}", txn["authorized_basis"])
        share["pending"] = target
        changed = changed or delta != 0
    return changed


def _on_authorization(step: _Step, offers: OfferBook) -> Outcome:
    event = step.event
    existing = step.txns.get(event.transaction_ref)
    if existing is not None:
        # A late authorisation after its clearing (out of order), or a second one for the same ref.
        return Outcome.ALREADY_SETTLED if existing["status"] != "authorized" else Outcome.NO_CHANGE
    shares, outcome = _match(event, offers)
    if not shares:
        return step.not_earned(outcome, f"authorisation earns nothing: {outcome.value}")
    txn = step.put(event.transaction_ref, _new_txn(event, shares, "authorized"))
    txn["authorized_basis"] = purchase_basis(event)
    if not _set_pending(step, txn, "PENDING_CREATED"):
        return Outcome.MATCHED_ACCRUES_ON_CLEARING
    return Outcome.EARNED


def _on_incremental(step: _Step, offers: OfferBook) -> Outcome:
    txn = step.txn(step.event.transaction_ref)
    if txn is None or txn["status"] != "authorized":
        return Outcome.UNKNOWN_TRANSACTION if txn is None else Outcome.ALREADY_SETTLED
    if not step.event.approved:
        return Outcome.DECLINED
    txn["authorized_basis"] += purchase_basis(step.event)
    return Outcome.ADJUSTED if _set_pending(step, txn, "PENDING_ADJUSTED") else Outcome.NO_CHANGE


def _on_reversal(step: _Step, offers: OfferBook) -> Outcome:
    txn = step.txn(step.event.transaction_ref)
    if txn is None or txn["status"] != "authorized":
        return Outcome.UNKNOWN_TRANSACTION if txn is None else Outcome.ALREADY_SETTLED
    txn["authorized_basis"] = max(0, txn["authorized_basis"] - purchase_basis(step.event))
    return Outcome.RELEASED if _set_pending(step, txn, "PENDING_ADJUSTED") else Outcome.NO_CHANGE


def _on_expiry(step: _Step, offers: OfferBook) -> Outcome:
    txn = step.txn(step.event.transaction_ref)
    if txn is None or txn["status"] != "authorized":
        return Outcome.UNKNOWN_TRANSACTION if txn is None else Outcome.ALREADY_SETTLED
    txn["status"] = "expired"
    for share in txn["shares"]:
        step.entry("EXPIRED", "PENDING", "EXPENSE", share["pending"], share, "expired", "authorisation expired: pending released")
        share["pending"] = 0
    return Outcome.EXPIRED


def _on_clearing(step: _Step, offers: OfferBook) -> Outcome:
    event = step.event
    txn = step.txn(event.transaction_ref)
    force_post = txn is None
    if txn is None:
        # A force post, or a clearing that arrived before its authorisation: judged on its own.
        shares, outcome = _match(event, offers)
        if not shares:
            return step.not_earned(outcome, f"clearing earns nothing: {outcome.value}")
        txn = step.put(event.transaction_ref, _new_txn(event, shares, "clearing"))
        txn["force_post"] = True
    elif txn["status"] == "cleared":
        return Outcome.ALREADY_SETTLED
    basis = purchase_basis(event)
    final = event.clearing_count is None or event.clearing_sequence == event.clearing_count
    part = "" if event.clearing_count is None else f" (part {event.clearing_sequence} of {event.clearing_count})"
    for share in txn["shares"]:
        confirm = _reward(share, basis)
        if share["max_reward_minor"] is not None:
            confirm = min(confirm, max(0, share["max_reward_minor"] - share["earned"]))
        from_pending = min(share["pending"], confirm)
        detail = f"confirmed{part}: {_rate_detail(share, basis, confirm)}"
        step.entry("CONFIRMED", "PENDING", "CONFIRMED", from_pending, share, "confirmed", detail, basis, force_post)
        step.entry("CONFIRMED", "EXPENSE", "CONFIRMED", confirm - from_pending, share, "confirmed", detail, basis, force_post)
        share["pending"] -= from_pending
        share["confirmed"] += confirm
        share["earned"] += confirm
        if final and share["pending"] > 0:
            step.entry("PENDING_RELEASED", "PENDING", "EXPENSE", share["pending"], share, "released", "final clearing: pending not cleared is released")
            share["pending"] = 0
        if share["pending_days"] == 0 and share["confirmed"] > 0:
            step.entry("MADE_AVAILABLE", "CONFIRMED", "AVAILABLE", share["confirmed"], share, "available", "no return window: available at once")
            share["available"] += share["confirmed"]
            share["confirmed"] = 0
    txn["cleared_basis"] += basis
    txn["status"] = "cleared" if final else "clearing"
    return Outcome.CONFIRMED


def _claw_back(step: _Step, share: dict[str, Any], amount: int, reason: str, detail: str) -> int:
    """Take ``amount`` back: from CONFIRMED first, then AVAILABLE (which may go negative, recorded)."""
    # Never negative: a later clearing part can lower a refund's prorated target below what was
    # already taken back; that is not a reason to give cashback back.
    amount = max(0, min(amount, share["earned"] - share["clawed_back"]))
    from_confirmed = min(share["confirmed"], amount)
    step.entry("CLAWED_BACK", "CONFIRMED", "EXPENSE", from_confirmed, share, reason, detail)
    step.entry("CLAWED_BACK", "AVAILABLE", "EXPENSE", amount - from_confirmed, share, reason, detail)
    share["confirmed"] -= from_confirmed
    share["available"] -= amount - from_confirmed
    share["clawed_back"] += amount
    return amount


def _purchase_of(step: _Step) -> dict[str, Any] | None:
    event = step.event
    txn = step.txn(event.original_transaction_ref or event.transaction_ref)
    return txn if txn is not None and txn["cleared_basis"] > 0 else None


def _on_refund(step: _Step, offers: OfferBook) -> Outcome:
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


def _on_chargeback(step: _Step, offers: OfferBook) -> Outcome:
    txn = _purchase_of(step)
    if txn is None:
        return Outcome.UNKNOWN_TRANSACTION
    clawed = 0
    for share in txn["shares"]:
        taken = _claw_back(step, share, share["earned"] - share["clawed_back"], "chargeback", "chargeback: all cashback of the purchase")
        share["chargeback_clawed"] += taken
        clawed += taken
    return Outcome.CLAWED_BACK if clawed else Outcome.NO_CHANGE


def _on_chargeback_reversal(step: _Step, offers: OfferBook) -> Outcome:
    txn = _purchase_of(step)
    if txn is None:
        return Outcome.UNKNOWN_TRANSACTION
    recredited = 0
    for share in txn["shares"]:
        amount = share["chargeback_clawed"]
        book = "AVAILABLE" if share["pending_days"] == 0 else "CONFIRMED"
        step.entry("RECREDITED", "EXPENSE", book, amount, share, "chargeback_reversed", "chargeback reversed: cashback credited again")
        share["available" if book == "AVAILABLE" else "confirmed"] += amount
        share["clawed_back"] -= amount
        share["chargeback_clawed"] = 0
        recredited += amount
    return Outcome.RECREDITED if recredited else Outcome.NO_CHANGE


_HANDLERS = {
    EventType.AUTHORIZATION: _on_authorization,
    EventType.INCREMENTAL_AUTHORIZATION: _on_incremental,
    EventType.AUTHORIZATION_REVERSAL: _on_reversal,
    EventType.AUTHORIZATION_EXPIRY: _on_expiry,
    EventType.CLEARING: _on_clearing,
    EventType.REFUND: _on_refund,
    EventType.CHARGEBACK: _on_chargeback,
    EventType.CHARGEBACK_REVERSAL: _on_chargeback_reversal,
}


def balances(entries: Iterable[Entry]) -> dict[tuple[str, str, str], dict[str, int]]:
    """Customer balances implied by entries, per (account, reward kind, currency): the oracle the
    tests compare Postgres with. Same rules as the sink's SQL."""
    result: dict[tuple[str, str, str], dict[str, int]] = {}
    for entry in entries:
        if entry["entry_kind"] == "NOT_EARNED":
            continue
        key = (entry["account_id"], entry["reward_kind"], entry["currency"])
        totals = result.setdefault(key, dict.fromkeys(BALANCE_FIELDS, 0))
        amount = entry["amount_minor"]
        for book, sign in ((entry["debit_book"], -1), (entry["credit_book"], 1)):
            if book in _BOOK_FIELDS:
                totals[_BOOK_FIELDS[book]] += sign * amount
        if entry["entry_kind"] == "CONFIRMED":
            totals["lifetime_earned_minor"] += amount
        elif entry["entry_kind"] == "CLAWED_BACK":
            totals["clawed_back_minor"] += amount
        elif entry["entry_kind"] == "RECREDITED":  # a reversed chargeback undoes its clawback
            totals["clawed_back_minor"] -= amount
    return result


_BOOK_FIELDS = {"PENDING": "pending_minor", "CONFIRMED": "confirmed_minor", "AVAILABLE": "available_minor"}
BALANCE_FIELDS = ("pending_minor", "confirmed_minor", "available_minor", "lifetime_earned_minor", "clawed_back_minor")
