"""Time passing: return windows that end and authorisations that expire, without waiting for the
account's next card event.

The rules engine records when things fall due: ``expires_at_ms`` on an authorised purchase (its
authorisation time plus the longest ``auth_expiry_days`` of its offers), ``available_at_ms`` on a
share whose cashback was confirmed (the clearing time plus the offer's ``pending_days``; a later
clearing part pushes it later), and the account's earliest due time as ``state.due_ms``.

``due_events(state, account_id, now)`` turns what is due by ``now`` into internal events
(``AUTHORIZATION_EXPIRY``, ``RETURN_WINDOW_ENDED``, ``AVAILABLE_EXPIRY`` when a lot of unused
points or store credit expires and ``EXPIRY_NOTICE`` when the customer is to be told it will:
``stream.core.expiry``) that go through ``decide`` like any other
event: the same entries, the same budget and cap bookkeeping, and deterministic ids
(``<kind>:<account>:<transaction>:<due ms>``), so a redelivered clock tick changes nothing. Each
event happens at its due time, not at the tick's, so the result does not depend on how often the
clock ticks. Pure: the clock is read by the caller (the worker's ticks, a test, a back-test).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from stream.core.events import DAY_MS, CardEvent, EventType, note_event
from stream.core.state import UNKNOWN_DUE, AccountState, Lot, Share, Txn

_EXPIRY = EventType.AUTHORIZATION_EXPIRY.value
_WINDOW_ENDED = EventType.RETURN_WINDOW_ENDED.value
_LOT_EXPIRY = EventType.AVAILABLE_EXPIRY.value
_LOT_NOTICE = EventType.EXPIRY_NOTICE.value


def authorization_expires_at(event: CardEvent, offers: Iterable[Any]) -> int:
    """When an authorised purchase's pending cashback expires: the longest expiry of its offers
    (never before any of them would)."""
    days = max((offer.auth_expiry_days for offer in offers if offer is not None), default=30)
    return event.occurred_at_ms + days * DAY_MS


def open_return_window(share: Share, clearing: CardEvent) -> None:
    """A clearing confirmed cashback on ``share``: it becomes available when the return window
    after this clearing ends (a later part of a multi-clearing purchase extends it)."""
    ends = clearing.occurred_at_ms + share.pending_days * DAY_MS
    share.available_at_ms = max(share.available_at_ms or 0, ends)


def window_over(share: Share, event: CardEvent) -> bool:
    return share.available_at_ms is not None and share.available_at_ms <= event.occurred_at_ms


def _due(txn: Txn) -> list[tuple[int, str]]:
    due: list[tuple[int, str]] = []
    # Pending expires on a purchase not (or only partly) cleared: a final part that never comes
    # must not hold its cap and budget forever.
    if txn.status in ("authorized", "clearing") and txn.expires_at_ms and any(s.pending > 0 for s in txn.shares):
        due.append((txn.expires_at_ms, _EXPIRY))
    windows = [s.available_at_ms for s in txn.shares if s.confirmed > 0 and s.available_at_ms]
    if windows:
        due.append((min(windows), _WINDOW_ENDED))
    return due


def settled(txn: Txn) -> bool:
    """Nothing of the transaction is pending, confirmed, held for review or due: only a refund or a
    chargeback can still change it."""
    return txn_due_ms(txn) is None and all(s.pending == 0 and s.confirmed == 0 and s.held == 0 for s in txn.shares)


def earliest_due_ms(txn: Txn) -> int | None:
    """When something of the transaction next falls due, or None (what ``Txn.due_ms`` keeps): the
    earliest of ``_due``'s times, without making them."""
    shares = txn.shares
    due = None
    if txn.status in ("authorized", "clearing") and txn.expires_at_ms and any(s.pending > 0 for s in shares):
        due = txn.expires_at_ms
    for share in shares:
        window = share.available_at_ms
        if share.confirmed > 0 and window and (due is None or window < due):
            due = window
    return due


def txn_due_ms(txn: Txn) -> int | None:
    return earliest_due_ms(txn) if txn.due_ms == UNKNOWN_DUE else txn.due_ms


def next_due_ms(state: AccountState) -> int | None:
    """The earliest time anything of this account falls due, or None."""
    due = min((due for txn in state.txns.values() if (due := txn_due_ms(txn)) is not None), default=None)
    return with_lots(due, state.lots)


def lot_due_ms(lot: Lot) -> int:
    """When something of the lot next falls due: its notice until it was made, then its expiry."""
    notice = lot.notice_ms
    return notice if notice is not None and not lot.noticed and notice < lot.expires_ms else lot.expires_ms


def with_lots(due_ms: int | None, lots: list[Lot]) -> int | None:
    """``due_ms`` (the transactions' earliest) or the earliest expiry or notice of ``lots``, whichever is first."""
    if not lots:
        return due_ms
    expires = min(lot_due_ms(lot) for lot in lots)
    return expires if due_ms is None or expires < due_ms else due_ms


def due_events(state: AccountState | None, account_id: str, now_ms: int) -> list[CardEvent]:
    """The internal events due by ``now_ms``, oldest first: one per transaction and kind, and one
    per lot's opening purchase and expiry time, or notice time (``stream.core.expiry``)."""
    if state is None or state.due_ms is None or state.due_ms > now_ms:
        return []
    due = sorted((when, kind, ref, txn.currency) for ref, txn in state.txns.items() for when, kind in _due(txn) if when <= now_ms)
    # (time, kind, ref): a unit (one event expires, or gives notice of, all the ref's lots due then)
    expiring: dict[tuple[int, str, str], str] = {}
    for lot in state.lots:
        if lot.expires_ms <= now_ms:
            key = (lot.expires_ms, _LOT_EXPIRY, lot.ref)
            expiring[key] = min(expiring.get(key, lot.unit), lot.unit)
        notice = lot.notice_ms
        if notice is not None and notice <= now_ms and not lot.noticed and notice < lot.expires_ms:
            key = (notice, _LOT_NOTICE, lot.ref)
            expiring[key] = min(expiring.get(key, lot.unit), lot.unit)
    if expiring:
        due = sorted([*due, *((when, kind, ref, unit) for (when, kind, ref), unit in expiring.items())])
    return [_internal_event(kind, account_id, ref, when, currency) for when, kind, ref, currency in due]


# The internal events time passing makes, by the prefix of their ids (``_internal_event``).
_TIME_EVENT_PREFIXES = tuple(f"{kind.lower()}:" for kind in (_EXPIRY, _WINDOW_ENDED, _LOT_EXPIRY, _LOT_NOTICE))


def is_time_event_id(event_id: str) -> bool:
    """Whether an event id is one of an internal event made by time passing (a card processor's
    expiry of an authorisation may share the prefix: treating it as one only re-sends its entries)."""
    return event_id.startswith(_TIME_EVENT_PREFIXES)


def _internal_event(kind: str, account_id: str, transaction_ref: str, due_ms: int, currency: str) -> CardEvent:
    event_id = f"{kind.lower()}:{account_id}:{transaction_ref}:{due_ms}"
    at = datetime.fromtimestamp(due_ms / 1000, tz=UTC)
    return note_event(event_id, EventType(kind), account_id, at, transaction_ref, currency, None)
