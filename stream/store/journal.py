"""The journal: one batch of accruals written in one Postgres transaction (entries unique by account
and accrual id, conflicts recorded apart, balances folded from exactly the rows inserted).

The ledger does part of it itself (migration 0010): every statement that inserts entries folds exactly those rows
into balances (the arithmetic of migration 0007, per balance), and an id is held by one kind of line at most (an
entry under the id of a purchase that earned nothing, or the reverse, is refused as ``ledger_ids_once``). So a batch
of new lines is written as it is, without looking first: each table's new lines in one ``COPY`` (Postgres's fastest
way in, triggers and constraints checked as for any insert). Their rows are made before the transaction (``stream.store.staged_rows.stage``;
the sink does it while the previous batch is written), so Postgres is handed each statement as soon as it has
answered the last. On a logged run's 227,638 accruals (186,643 entries, 27,533 purchases that earned nothing),
written batch after batch into a fresh database, three rounds each way, the writes took 6.99, 6.75 and 6.58 s
against 8.80, 8.40 and 8.22 s when the rows were made inside the transaction and the purchases that earned nothing
went in by the ``INSERT`` below (asyncpg checks every element of its array arguments against Python's abstract
collection types, and Postgres read the columns out of the JSON), for 0.2 s more Python made ahead.

When an id of the batch is held already (a replay, a conflict: the unique keys or ``ledger_ids_once`` refuse the
write and the transaction rolls back), when the batch holds one id twice with other content, or when the
connection's last batch met held ids (a backlog replayed after a crash: ``_CAREFUL``), the batch is written judged
(the same line twice in a batch, from an event redelivered whose entries the worker sent again, about one record in
twenty of the simulator's mix, is written once without looking: ``staged_rows.first_copies``):

1. the look-up: for every row, what the account's ledger and its purchases that earned nothing already hold under
   the row's id (two index probes a row: ``LATERAL ... LIMIT 1`` is never turned into a join over a table);
2. the verdict, here in Python (``judge``): an entry whose id the account's ledger holds with other content
   (another fingerprint, another kind, or a NOT_EARNED line under an entry's id and the reverse; or the same id
   twice in this batch with other content, the first one held) is a conflict: recorded in ledger_conflicts, never
   written, and returned by position for the sink to dead-letter. An id the ledger holds with the same content is
   a replay (nothing written), and so is the same line twice in one batch after its first;
3. the new lines written: the entries copied, the purchases that earned nothing and the items by ``INSERT``.

A row another writer committed under one of the batch's ids between 1 and 3 makes 3 fail the same way: the batch
is judged again, on what is committed then (``_RACE_ATTEMPTS``). The statements are planned at each execution, for
the tables' sizes then (``_SET_UP``).

The same line again in the *next* batch (an event redelivered across the end of a fetch: its lines one to three
offsets after their first copies open the next batch) is left out in Python too: a connection remembers the
fingerprints of the lines its last batches committed as they are (``_COMMITTED``, a ``Committed`` each: every line
of a batch written without looking, every line a judged batch did not refuse), and leaves the same lines (same
account, id and fingerprint) out of its next batch, counted as replays (``_less_committed``). A line under one of
those ids with other content stays in and is judged a conflict; what is remembered goes with the connection (a new
one after an outage or a rebalance remembers nothing, and looks). Before, each such batch failed on the ledger's
keys, rolled back and was judged, and the batch after it was judged too (``_CAREFUL``): in 9 of the 194 batches of
2,000 of a benchmark log's 386,732 accruals, which the journal alone then wrote in 8.07 / 9.35 / 8.94 / 9.75 / 9.70
/ 9.20 / 11.11 s against 8.23 / 7.60 / 8.76 / 8.05 / 7.22 / 7.84 / 8.83 s (the two in turn, a fresh database each,
the same entries written and replays counted).

The memory reaches further back than the last batch, bounded: the copies are one or two offsets after the first in
their partition, but when a fetch ends between them, the partition's next records may come batches later, after the
other partitions' (up to 38,250 records later in the order a benchmark log was read). It holds between
``staged_rows.MEMORY_LINES`` and twice as many lines (``staged_rows.Committed``), in two halves (the older forgotten
whole when the newer fills), about 310 bytes a line (15 MB at most). A line forgotten is looked up, as before. On
another benchmark log's 227,638 accruals in batches of 2,000, 13 of 114 batches had been judged for lines 2 to 20
batches back; none is now, and the journal alone wrote them in 5.60 / 6.62 / 5.65 / 6.01 / 6.35 / 5.94 s against
5.91 / 6.96 / 6.36 / 6.08 / 6.62 / 6.10 s (in turn, a fresh database each: faster in each pair, medians 5.97 and
6.23 s, about 4%); and no transaction is rolled back for a replay the connection wrote itself.

The rows' layout, staged and as each table takes them, and a batch of them made ready to be written (``stage``), is
``stream.store.staged_rows``.

The SQL of migration 0010 and ``stream.core.balances`` compute balances by the same rules; the tests hold
them equal (tests/integration/test_ledger.py).

A refused redemption (accrual v8's REDEMPTION_REFUSED, ``stream.core.redemptions``) is a line like a purchase that
earned nothing, written to the same table under its ``line_kind`` (migration 0018) and judged alike; so is a wallet
mark (WALLET_MARK, ``stream.core.payouts``, migration 0020).

Reconciliation items (accrual v4's RECONCILIATION records, ``stream.core.entries``) go to their own table,
``reconciliation_items`` (migration 0011), in the same transaction. A batch written without looking copies them
in (``COPY``, their columns read out of the explanation here: on a log whose 89,768 rows were half items, the
journal wrote them all in 2.16 s instead of 2.63 s with the ``INSERT`` below, which reads them in Postgres). An
item id the table holds already (a replay) is refused by its key (account and item id), and the batch is then
written judged, where the items go in with one ``INSERT ... ON CONFLICT DO NOTHING``, so a replayed item writes
nothing and needs no look-up. Their id (``<event_id>#reconciliation``) is never an entry's nor a NOT_EARNED line's,
so they take no part in the verdicts. An item arriving again under its id with other content is not judged a
conflict: the first one stays (it moves no money; the worker's own duplicate check, ``stream.core.rules``, refuses
an event id with other content first).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import asyncpg
import msgspec

from stream.core.entries import RECONCILIATION, moves_money
from stream.store.staged_rows import (
    ACCOUNT,
    AMOUNT,
    CREDIT,
    CURRENCY,
    EXPLANATION,
    FINGERPRINT,
    ID,
    ITEM_COLUMNS,
    ITEM_KIND,
    KIND,
    LEDGER_COLUMNS,
    NOT_EARNED,
    NOT_EARNED_COLUMNS,
    NOT_EARNED_LINES,
    OCCURRED,
    OFFER,
    POSITION,
    PURCHASE,
    REF,
    SOURCE,
    Committed,
    Staged,
    stage,
    without,
)

_HOLD_REVIEWS = ("HOLD_RELEASED", "HOLD_FORFEITED")
_RACE_ATTEMPTS = 5  # judged writes of one batch before a key violation is taken for a refusal
# What refuses a line whose id is held: the unique keys of the two tables, and migration 0010's check across them.
_KEYS = frozenset(
    {
        "ledger_entries_account_accrual",
        "purchases_not_earned_pkey",
        "ledger_ids_once",
        "reconciliation_items_account_id_item_id_key",
    }
)
_EXPLANATION_JSON = msgspec.json.Decoder()

# Connections set up for the journal, and those whose last batch met ids held already (weak: a closed one leaves).
_PREPARED: weakref.WeakSet[asyncpg.Connection] = weakref.WeakSet()
_CAREFUL: weakref.WeakSet[asyncpg.Connection] = weakref.WeakSet()
# The lines each connection's last batches committed (module doc).
_COMMITTED: weakref.WeakKeyDictionary[asyncpg.Connection, Committed] = weakref.WeakKeyDictionary()

# The statements are prepared once per connection (asyncpg's cache, and the triggers' of migration 0010); this makes
# Postgres plan them at each execution for the tables' sizes then, never keeping a plan made while they were small
# (a look-up that reads a small table whole, a balances update that hashes it) for as long as the connection lives.
# And the rows a statement inserted, which Postgres hands its statement triggers (the folds, the id checks) as a
# transition table, stay in memory up to ``TRANSITION_MEMORY``: at the default 4 MB a batch of the sink's default size
# (10,000 accruals, about 7 MB of ledger rows) was written to a temporary file and read back by each trigger.
TRANSITION_MEMORY = "64MB"
_SET_UP = f"SET plan_cache_mode = force_custom_plan; SET work_mem = '{TRANSITION_MEMORY}'"

# Step 1: per row (by its place in the arrays, from 1), what is held under its id, for the rows something is.
_LOOK_UP = """
SELECT b.n, l.entry_kind, l.fingerprint, p.held, p.reason, p.detail
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS b(account_id, accrual_id, n)
LEFT JOIN LATERAL (
    SELECT entry_kind, fingerprint FROM ledger_entries l
    WHERE l.account_id = b.account_id AND l.accrual_id = b.accrual_id LIMIT 1) l ON true
LEFT JOIN LATERAL (
    SELECT true AS held, reason, detail FROM purchases_not_earned p
    WHERE p.account_id = b.account_id AND p.accrual_id = b.accrual_id LIMIT 1) p ON true
WHERE l.entry_kind IS NOT NULL OR p.held
"""

_RECORD_CONFLICTS = """
INSERT INTO ledger_conflicts (account_id, accrual_id, source_event_id, held_kind, arrived_kind,
    arrived_amount_minor, arrived_currency, arrived_fingerprint, arrived)
SELECT account_id, accrual_id, source_event_id, held_kind, arrived_kind, amount_minor, currency, fingerprint, explanation
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[], $8::text[], $9::jsonb[])
    WITH ORDINALITY AS c(account_id, accrual_id, source_event_id, held_kind, arrived_kind, amount_minor, currency,
        fingerprint, explanation, n)
ORDER BY n  -- the same conflict found twice is recorded once, the first time: what the ledger holds before the batch
ON CONFLICT (account_id, accrual_id, arrived_fingerprint) DO NOTHING
"""

# Step 3, the purchases that earned nothing (a new entry's row is ``LEDGER_COLUMNS``, copied).
# Reconciliation items (module doc): the kinds the ledger took, one per new row.
_INSERT_ITEMS = f"""
INSERT INTO reconciliation_items ({", ".join(ITEM_COLUMNS)})
SELECT item_id, source_event_id, account_id, transaction_ref, purchase_ref, explanation->>'reason',
    (explanation->>'basis_minor')::bigint, explanation->>'basis_currency', occurred_at, explanation->>'detail', fingerprint
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::jsonb[], $8::text[])
    AS n(item_id, source_event_id, account_id, transaction_ref, purchase_ref, occurred_at, explanation, fingerprint)
ON CONFLICT (account_id, item_id) DO NOTHING
RETURNING kind
"""

# A line's offer_id is the offer it is about where the record names one (a holdout line: migration 0013).
_INSERT_REFUSALS = f"""
INSERT INTO purchases_not_earned ({", ".join(NOT_EARNED_COLUMNS)})
SELECT accrual_id, source_event_id, account_id, transaction_ref, explanation->>'reason',
    explanation->>'detail', (explanation->>'basis_minor')::bigint, explanation->>'basis_currency', occurred_at, offer_id,
    line_kind
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::jsonb[], $7::text[], $8::text[])
    AS n(accrual_id, source_event_id, account_id, transaction_ref, occurred_at, explanation, offer_id, line_kind)
"""


@dataclass(frozen=True, slots=True)
class BatchResult:
    written: int  # new ledger entries
    duplicates: int  # entries already in the ledger, identical: replays
    conflicts: tuple[int, ...] = ()  # positions of entries whose id the ledger holds with other content: never written
    holds: tuple[str, ...] = ()  # "<entry kind>:<rule>" of each new entry into HELD, and each release or forfeit of one
    items: tuple[str, ...] = ()  # the kind of each new reconciliation item (a replayed one is not new)


# What step 1 found under a row's id: (ledger entry's kind, its fingerprint, whether a purchase that earned
# nothing is held, that purchase's reason, its detail); None where nothing is.
Held = tuple[str | None, str | None, bool | None, str | None, str | None]


@dataclass(frozen=True, slots=True)
class Verdict:
    # (rule, index, index of the earlier row held, kind held), in the order they are recorded; rule 1: the ledger
    # holds the id as an entry with other content, 2: as a purchase that earned nothing (and the row is an entry,
    # or another refusal), 3: an earlier row of the batch has it with other content. One row may break several.
    conflicts: list[tuple[int, int, int, str]]
    new: list[int]  # indexes of the rows to write (entries and purchases that earned nothing)
    refused: frozenset[int]  # indexes of the rows in conflict


def judge(rows: Sequence[tuple[Any, ...]], held: dict[int, Held], repeats: bool) -> Verdict:
    """Step 2 (module doc): the verdict on each row of a batch from what the ledger holds under its id (``held``,
    by index) and the rows before it in the batch (``repeats``: some (account, id) occurs twice)."""
    if not held and not repeats:  # nothing under these ids, each once: all new (the common case)
        return Verdict([], list(range(len(rows))), frozenset())
    conflicts: list[tuple[int, int, int, str]] = []
    refused: set[int] = set()
    new: list[int] = []
    seen: dict[tuple[str, str], list[int]] = {}
    for index, row in enumerate(rows):
        kind, fingerprint = row[KIND], row[FINGERPRINT]
        found = len(conflicts)
        here = held.get(index)
        if here is not None:
            held_kind, held_fingerprint, not_earned, reason, detail = here
            if held_kind is not None and held_fingerprint != fingerprint:
                conflicts.append((1, index, index, held_kind))
            if not_earned and (kind not in NOT_EARNED_LINES or (reason, detail) != _reason_and_detail(row)):
                conflicts.append((2, index, index, NOT_EARNED))
        first = True  # of its id in this batch
        if repeats:
            earlier = seen.setdefault((row[ACCOUNT], row[ID]), [])
            conflicts.extend((3, index, e, rows[e][KIND]) for e in earlier if rows[e][FINGERPRINT] != fingerprint)
            first = not earlier
            earlier.append(index)
        if len(conflicts) > found:
            refused.add(index)
        elif kind != RECONCILIATION and here is not None and (here[2] if kind in NOT_EARNED_LINES else here[0] is not None):
            pass  # a replay: the ledger holds it as it is
        elif first:  # else the same row again in this batch, after its first
            new.append(index)
    conflicts.sort()
    return Verdict(conflicts, new, frozenset(refused))


def _reason_and_detail(row: tuple[Any, ...]) -> tuple[Any, Any]:
    explanation = _EXPLANATION_JSON.decode(row[EXPLANATION])
    return explanation.get("reason"), explanation.get("detail")


def _less_committed(staged: Staged, committed: Committed | None) -> tuple[Staged, int]:
    """``staged`` without its lines that the connection's last batches committed as they are (``committed``), and
    how many of its rows that move money were left out (replays, counted as such). A batch with an id twice with
    other content is judged whole, as it is."""
    if committed is None or staged.lines is None:
        return staged, 0
    again = committed.again(staged.seen)
    if not again:
        return staged, 0
    kept = without(staged, again)
    return kept, staged.moving - kept.moving


async def write_batch(connection: asyncpg.Connection, batch: Sequence[tuple[Any, ...]] | Staged) -> BatchResult:
    """Write one batch of staged accrual rows (``stream.store.staged_rows.STAGING_COLUMNS`` order, or ``stage``'s
    of them) in one transaction (module doc)."""
    if connection not in _PREPARED:
        await connection.execute(_SET_UP)
        _PREPARED.add(connection)
    staged, replayed = _less_committed(batch if isinstance(batch, Staged) else stage(batch), _COMMITTED.get(connection))
    rows, lines = staged.rows, staged.lines
    repeats = lines is None or len(lines) < len(rows)
    attempt = 1
    while True:
        judged = lines is None or connection in _CAREFUL
        try:
            if lines is not None and not judged:
                items = await _write_lines(connection, staged)
                _remember(connection, staged.seen)
                written = len(staged.entries)
                return BatchResult(written, staged.moving - written + replayed, (), _holds(staged.entries), items)
            result, committed = await _write_judged(connection, rows, repeats)
            _remember(connection, committed)
            return replace(result, duplicates=result.duplicates + replayed) if replayed else result
        except asyncpg.exceptions.UniqueViolationError as error:
            if error.constraint_name not in _KEYS or (judged and attempt >= _RACE_ATTEMPTS):
                raise
            attempt += judged  # judged: another writer committed one of these ids since the look-up
            _CAREFUL.add(connection)


def _remember(connection: asyncpg.Connection, lines: dict[tuple[str, str], str]) -> None:
    memory = _COMMITTED.get(connection)
    if memory is None:
        memory = _COMMITTED[connection] = Committed()
    memory.add(lines)


async def _write_lines(connection: asyncpg.Connection, staged: Staged) -> tuple[str, ...]:
    """The batch's lines, all new, written without looking (module doc): each table's in one ``COPY``; the kinds of
    the reconciliation items."""
    async with connection.transaction():
        if staged.ledger:
            await connection.copy_records_to_table("ledger_entries", records=staged.ledger, columns=LEDGER_COLUMNS)
        if staged.refusals:
            await connection.copy_records_to_table("purchases_not_earned", records=staged.refusals, columns=NOT_EARNED_COLUMNS)
        if staged.items:
            await connection.copy_records_to_table("reconciliation_items", records=staged.items, columns=ITEM_COLUMNS)
    return tuple(item[ITEM_KIND] for item in staged.items)


async def _insert(
    connection: asyncpg.Connection, entries: list[tuple[Any, ...]], lines: list[tuple[Any, ...]]
) -> tuple[str, ...]:
    """A judged batch's new entries and purchases that earned nothing into the ledger (it folds the entries into
    balances), and its reconciliation items into theirs with ``ON CONFLICT DO NOTHING`` (``lines`` holds both kinds;
    module doc): the kinds of the items new to it."""
    if entries:
        await connection.copy_records_to_table("ledger_entries", records=[r[1:] for r in entries], columns=LEDGER_COLUMNS)
    refusals = [r for r in lines if r[KIND] in NOT_EARNED_LINES]
    if refusals:
        await connection.execute(
            _INSERT_REFUSALS,
            *([r[c] for r in refusals] for c in (ID, SOURCE, ACCOUNT, REF, OCCURRED, EXPLANATION, OFFER, KIND)),
        )
    items = [r for r in lines if r[KIND] == RECONCILIATION]
    if not items:
        return ()
    found = await connection.fetch(
        _INSERT_ITEMS,
        *([r[c] for r in items] for c in (ID, SOURCE, ACCOUNT, REF, PURCHASE, OCCURRED, EXPLANATION, FINGERPRINT)),
    )
    return tuple(row[0] for row in found)


async def _write_judged(
    connection: asyncpg.Connection, rows: Sequence[tuple[Any, ...]], repeats: bool
) -> tuple[BatchResult, dict[tuple[str, str], str]]:
    """Steps 1 to 3 (module doc): the batch's result, and the fingerprints of the lines the ledger holds as they are
    once it commits (every row not refused) by their (account, id)."""
    async with connection.transaction():
        found = await connection.fetch(_LOOK_UP, [row[ACCOUNT] for row in rows], [row[ID] for row in rows])
        verdict = judge(rows, {f[0] - 1: (f[1], f[2], f[3], f[4], f[5]) for f in found}, repeats)
        if verdict.conflicts:
            await _record(connection, rows, verdict.conflicts)
        entries = [rows[i] for i in verdict.new if moves_money(rows[i][KIND])]
        items = await _insert(connection, entries, [rows[i] for i in verdict.new if not moves_money(rows[i][KIND])])
    if not found:
        _CAREFUL.discard(connection)  # nothing held under this batch's ids: the next one is written without looking
    committed = {(row[ACCOUNT], row[ID]): row[FINGERPRINT] for i, row in enumerate(rows) if i not in verdict.refused}
    return _result(rows, entries, verdict, items), committed


def _result(
    rows: Sequence[tuple[Any, ...]], entries: list[tuple[Any, ...]], verdict: Verdict, items: tuple[str, ...] = ()
) -> BatchResult:
    ledger_rows = sum(1 for i, row in enumerate(rows) if moves_money(row[KIND]) and i not in verdict.refused)
    return BatchResult(
        written=len(entries),
        duplicates=ledger_rows - len(entries),
        conflicts=tuple(sorted({rows[i][POSITION] for _, i, _, _ in verdict.conflicts})),
        holds=_holds(entries),
        items=items,
    )


def _holds(entries: list[tuple[Any, ...]]) -> tuple[str, ...]:
    """``BatchResult.holds`` of the new entries ``entries``."""
    return tuple(
        f"{r[KIND]}:{_EXPLANATION_JSON.decode(r[EXPLANATION]).get('reason') or ''}"
        for r in entries
        if r[CREDIT] == "HELD" or r[KIND] in _HOLD_REVIEWS
    )


async def _record(
    connection: asyncpg.Connection, rows: Sequence[tuple[Any, ...]], conflicts: list[tuple[int, int, int, str]]
) -> None:
    """The conflicts into ledger_conflicts, in the verdict's order (the first of the same one is kept)."""
    arrived = [rows[i] for _, i, _, _ in conflicts]
    await connection.execute(
        _RECORD_CONFLICTS,
        [r[ACCOUNT] for r in arrived],
        [r[ID] for r in arrived],
        [r[SOURCE] for r in arrived],
        [held_kind for _, _, _, held_kind in conflicts],
        [r[KIND] for r in arrived],
        [r[AMOUNT] for r in arrived],
        [r[CURRENCY] for r in arrived],
        [r[FINGERPRINT] for r in arrived],
        [r[EXPLANATION] for r in arrived],
    )
