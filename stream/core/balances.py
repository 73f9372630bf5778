"""Customer balances implied by ledger entries, per (account, reward kind, unit): the oracle the
tests compare Postgres with. The same arithmetic as the database's (migration 0007:
``book_movement``, ``earned_movement``, ``clawed_back_movement``, which 0009 makes count a
forfeited hold; ``held_minor`` is the HELD book); a test holds them equal."""

from __future__ import annotations

from collections.abc import Iterable

from stream.core.entries import Entry, moves_money


def balances(entries: Iterable[Entry]) -> dict[tuple[str, str, str], dict[str, int]]:
    """Customer balances implied by entries, per (account, reward kind, currency): the oracle the
    tests compare Postgres with. Same rules as the sink's SQL."""
    result: dict[tuple[str, str, str], dict[str, int]] = {}
    for entry in entries:
        if not moves_money(entry.entry_kind):
            continue
        key = (entry.account_id, entry.reward_kind, entry.currency)
        totals = result.setdefault(key, dict.fromkeys(BALANCE_FIELDS, 0))
        amount = entry.amount_minor
        for book, sign in ((entry.debit_book, -1), (entry.credit_book, 1)):
            if book in _BOOK_FIELDS:
                totals[_BOOK_FIELDS[book]] += sign * amount
        if entry.entry_kind == "CONFIRMED":
            totals["lifetime_earned_minor"] += amount
        elif entry.entry_kind in ("CLAWED_BACK", "HOLD_FORFEITED"):  # a forfeited hold is taken back too
            totals["clawed_back_minor"] += amount
        elif entry.entry_kind == "RECREDITED":  # a reversed chargeback undoes its clawback
            totals["clawed_back_minor"] -= amount
    return result


_BOOK_FIELDS = {
    "PENDING": "pending_minor",
    "CONFIRMED": "confirmed_minor",
    "AVAILABLE": "available_minor",
    "DONATED": "donated_minor",
    "HELD": "held_minor",
    "PAID_OUT": "paid_out_minor",  # cash paid out to the customer's bank account, net of returned payouts (0017)
    "REDEEMED": "redeemed_minor",  # points and store credit the customer redeemed (0018)
}
BALANCE_FIELDS = (
    "pending_minor",
    "confirmed_minor",
    "available_minor",
    "lifetime_earned_minor",
    "clawed_back_minor",
    "donated_minor",
    "held_minor",
    "paid_out_minor",
    "redeemed_minor",
)
