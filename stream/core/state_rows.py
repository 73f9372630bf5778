"""How an account's state is stored: one small summary and a row per transaction and per recent
event, so that an event writes what it changed, not the whole account.

The rules engine works on one ``AccountState`` per account (``stream.core.state``). Stored as one
value, an account with 2,000 purchases rewrote 1.6 MB on each of its events (the changelog, the
local store, and its encoding, for every event). Here the same state is kept as:

- the **summary**, under the account id: everything but the transactions and the recent events'
  entries, with the names of the rows to read (``refs``, ``recent``) and the rows this step wrote
  (``fresh``);
- a **row** per transaction (``<account>\\x1ft\\x1f<ref>``) and per recent event with the entries
  it produced, in one of 32 slots (``<account>\\x1fr\\x1f<slot>``) that the next events reuse.

One step writes its summary first, then its rows, on the same changelog partition (the producer
delivers one partition in order). The summary carries the step's rows in ``fresh``, so the summary
alone is the step's commit point: a crash after it and before its rows loses nothing (``assemble``
reads ``fresh`` before the rows, and the account's next step writes those rows again: ``carried``),
and a crash before it leaves the step unwritten, to be decided again from the redelivered input.
A row no longer named (a forgotten transaction) is deleted after the summary: a crash in between
leaves a row no summary names, never read (it only takes room).

Values are MessagePack (``encode``; the records of ``stream.core.state``). A value stored
by an earlier version, in JSON (its first byte ``{`` or ``[``; MessagePack never starts a map or an
array with either), is read as well: a summary of the same layout, or the whole state of the first
one (``txns`` and all). The next step of such an account writes all of its rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from sys import intern
from typing import Any, TypeVar

import msgspec

from stream.core.state import AccountState, Loose, Lot, Payout, Recent, Txn, Watch, state_from_plain

LAYOUT_VERSION = 3  # summary and rows in MessagePack
JSON_LAYOUT = 2  # the same, in JSON: read, never written
_SEPARATOR = "\x1f"  # never in an account id, a transaction ref or an event id (they are printable)
_TXN = "t"
_RECENT = "r"
_JSON_STARTS = frozenset(b"{[")

T = TypeVar("T")


class MissingRow(LookupError):
    """A summary names a row the store does not hold: the stored state is incomplete."""


class Summary(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What is stored under the account id: the state but its transactions and recent events, the
    rows to read for those (``refs``; ``recent``: event id and slot, the oldest first), and the
    rows its step wrote (``fresh``: key to row, the step's commit point)."""

    layout: int
    refs: list[str] = msgspec.field(default_factory=list)
    recent: list[tuple[str, int]] = msgspec.field(default_factory=list)
    loose: dict[str, Loose] = msgspec.field(default_factory=dict)
    caps: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)
    carry: dict[str, int] = msgspec.field(default_factory=dict)
    due_ms: int | None = None
    clock_ms: int | None = None
    fresh: dict[str, Any] = msgspec.field(default_factory=dict)  # rows as plain values once read back
    watch: Watch | None = None  # what the abuse rules remember (small and bounded: kept in the summary)
    lots: list[Lot] = msgspec.field(default_factory=list)  # rewards that expire (bounded: kept in the summary)
    wallet: dict[str, int] | None = None  # AVAILABLE per kind and unit (None: stored before it was kept)
    ticked: int | None = None  # the clock offset of the latest tick that changed the account (AccountState.ticked)
    payouts: dict[str, Payout] = msgspec.field(default_factory=dict)  # open and recently answered payouts (bounded)


class RecentRow(msgspec.Struct, array_like=True):
    """A recent event's slot: which event it holds, and that event's fingerprint and entries."""

    event_id: str
    recent: Recent


Stored = Summary | AccountState  # a summary, or a whole state stored by the first layout


class Head(msgspec.Struct, kw_only=True):
    """What a partition's due-time index reads of each stored summary (``decode_head``): the fields
    of ``Summary`` of the same names (a test holds them equal), every other field skipped unread."""

    due_ms: int | None = None
    wallet: dict[str, int] | None = None
    ticked: int | None = None


_encoder = msgspec.msgpack.Encoder()
_summaries = msgspec.msgpack.Decoder(Summary)
_heads = msgspec.msgpack.Decoder(Head)
_decoders: dict[type, msgspec.msgpack.Decoder[Any]] = {
    Txn: msgspec.msgpack.Decoder(Txn),
    RecentRow: msgspec.msgpack.Decoder(RecentRow),
}


def encode(value: Summary | Txn | RecentRow) -> bytes:
    """A stored value's bytes."""
    return _encoder.encode(value)


def decode_summary(raw: bytes | None) -> Stored | None:
    """What is stored under an account id (None: nothing, a new account)."""
    if raw is None:
        return None
    if raw[0] not in _JSON_STARTS:
        return _summaries.decode(raw)
    plain = json.loads(raw)
    if plain.get("layout") == JSON_LAYOUT:
        return msgspec.convert(plain, Summary)
    return state_from_plain(plain)


def decode_head(raw: bytes | None) -> Head | Stored | None:
    """What ``decode_summary`` reads, as far as its ``Head`` fields: a MessagePack summary's other
    fields are skipped, not made (an account of 30 transactions: 0.4 µs against 2; of 200: 0.8
    against 7). A clock tick's first reading of a partition reads every summary it holds."""
    if raw is None or raw[0] in _JSON_STARTS:
        return decode_summary(raw)
    return _heads.decode(raw)


# The text fields whose values repeat, across an account's rows and across accounts: kinds, books,
# currencies, offers, merchants, the account and its purchases' refs. A state the engine made shares
# one string object for each (the offer's, the event's); a decoded row has copies of its own, which
# made the states read back from the store about 1.8 times the size of those the engine made (1,893
# bytes an item against 1,057 over the benchmark's log), so a cache bounded in items took more
# memory the more of it was read back.
# Decoded rows share them again (``_shared_strings``): 1,187 bytes an item, for about 2 microseconds
# more an item to read (4.6 -> 6.8). Spelled out field by field: a loop over the names cost twice that.
_set = msgspec.structs.force_setattr  # entries are frozen: only their texts' objects change, never a value


def _shared_strings(row: T) -> T:
    """``row`` (just decoded), its repeated texts now the process's one copy of each (``sys.intern``:
    a string no longer used anywhere leaves the interned table too)."""
    if isinstance(row, Txn):
        row.status, row.currency, row.merchant_id = intern(row.status), intern(row.currency), intern(row.merchant_id)
        for s in row.shares:
            s.offer_id, s.currency, s.basis_currency = intern(s.offer_id), intern(s.currency), intern(s.basis_currency)
            s.rounding, s.reward_kind, s.accrue_on, s.method = (
                intern(s.rounding),
                intern(s.reward_kind),
                intern(s.accrue_on),
                intern(s.method),
            )
    elif isinstance(row, RecentRow):
        for e in row.recent.entries:
            _set(e, "account_id", intern(e.account_id))
            _set(e, "transaction_ref", intern(e.transaction_ref))
            if e.purchase_ref is not None:
                _set(e, "purchase_ref", intern(e.purchase_ref))
            _set(e, "entry_kind", intern(e.entry_kind))
            _set(e, "debit_book", intern(e.debit_book))
            _set(e, "credit_book", intern(e.credit_book))
            _set(e, "currency", intern(e.currency))
            _set(e, "reward_kind", intern(e.reward_kind))
            if e.offer_id is not None:
                _set(e, "offer_id", intern(e.offer_id))
            if e.merchant_id is not None:
                _set(e, "merchant_id", intern(e.merchant_id))
            x = e.explanation
            _set(x, "reason", intern(x.reason))
            _set(x, "basis_currency", intern(x.basis_currency))
            _set(x, "rounding", intern(x.rounding))
    return row


def _row(raw: Any, kind: type[T]) -> T:
    """A row's record from its stored bytes (MessagePack, or JSON from an earlier version) or from
    the plain value a summary's ``fresh`` holds once decoded, its repeated texts shared."""
    if isinstance(raw, bytes | bytearray | memoryview):
        if raw[0] not in _JSON_STARTS:
            return _shared_strings(_decoders[kind].decode(raw))
        raw = json.loads(bytes(raw))
    return _shared_strings(msgspec.convert(raw, kind))


def txn_key(account_id: str, ref: str) -> str:
    return f"{account_id}{_SEPARATOR}{_TXN}{_SEPARATOR}{ref}"


def recent_key(account_id: str, slot: int) -> str:
    """The row of one of the account's recent events: a slot, reused by the event that follows
    the one it held out of the recent events (no deletion to write, a fixed number of rows)."""
    return f"{account_id}{_SEPARATOR}{_RECENT}{_SEPARATOR}{slot}"


def txn_ref(key: str) -> str | None:
    """The transaction a row key names (``txn_key``); None: the key of another row or a summary."""
    parts = key.split(_SEPARATOR, 2)
    return parts[2] if len(parts) == 3 and parts[1] == _TXN else None


def is_summary_key(key: str) -> bool:
    """Whether a stored key is an account's summary (its id), not one of its rows."""
    return _SEPARATOR not in key


def in_rows(stored: Stored | None) -> bool:
    """Whether a stored value is a summary (its rows are stored apart)."""
    return isinstance(stored, Summary)


def slots_of(stored: Stored | None) -> dict[str, int]:
    """The slot of each recent event a stored summary names."""
    return dict(stored.recent) if isinstance(stored, Summary) else {}


def assemble(
    account_id: str,
    stored: Stored | None,
    row: Callable[[str], Any],
    rows: Callable[[list[str]], list[Any]] | None = None,
) -> AccountState | None:
    """The engine's state of an account from what is stored under its id, reading each row it
    names with ``row`` (its stored bytes, None when absent), or all of them at once with ``rows``
    (their stored bytes in the order asked, None where absent) when given. A whole state is
    returned as is."""
    if not isinstance(stored, Summary):
        return stored
    fresh = stored.fresh
    if rows is not None:
        wanted = [recent_key(account_id, slot) for _, slot in stored.recent if recent_key(account_id, slot) not in fresh]
        wanted += [key for key in (txn_key(account_id, ref) for ref in stored.refs) if key not in fresh]
        fetched = dict(zip(wanted, rows(wanted), strict=True))
        row = fetched.get

    def read(key: str, kind: type[T]) -> T:
        value = fresh[key] if key in fresh else row(key)
        if value is None:
            raise MissingRow(f"account {account_id}: the stored state names a row the store does not hold")
        return _row(value, kind)

    recent: dict[str, Recent] = {}
    for event_id, slot in stored.recent:
        held = read(recent_key(account_id, slot), RecentRow)
        if held.event_id != event_id:
            raise MissingRow(f"account {account_id}: a recent event's slot holds another event")
        recent[event_id] = held.recent
    return AccountState(
        recent=recent,
        txns={ref: read(txn_key(account_id, ref), Txn) for ref in stored.refs},
        loose=stored.loose,
        caps=stored.caps,
        carry=stored.carry,
        due_ms=stored.due_ms,
        clock_ms=stored.clock_ms,
        watch=stored.watch,
        lots=stored.lots,
        wallet=stored.wallet,
        payouts=stored.payouts,
        ticked=stored.ticked,
    )


def carried(stored: Stored | None) -> frozenset[str]:
    """The rows a stored summary carries (its step's): the store may not hold them yet, so the
    next step of the account writes them again (``stream.core.state_writes.split``'s ``rewrite``)."""
    return frozenset(stored.fresh) if isinstance(stored, Summary) else frozenset()
