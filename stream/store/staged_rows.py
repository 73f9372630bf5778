"""The rows of the journal (``stream.store.journal``): the staged row the sink makes of each accrual
(``STAGING_COLUMNS``, by ``stream.sink.staging_row``) and the rows it becomes in the ledger's tables: a ledger
entry (``LEDGER_COLUMNS``), a reconciliation item (``ITEM_COLUMNS``, ``item_row``), a purchase that earned nothing
(``NOT_EARNED_COLUMNS``, ``refusal_row``). The benchmark's COPY baseline copies the same columns (``stream.localstack.bench_baselines``).
A batch of staged rows is made ready to be written without looking (``stage``: its later copies of a line left out,
``first_copies``, and each table's rows made) before its transaction, while the previous batch's runs. What a
connection's last batches committed is remembered as ``Committed`` (the journal leaves those lines out of the next
batch as staged: ``without``)."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from stream.core.entries import RECONCILIATION, REDEMPTION_REFUSED, WALLET_MARK, moves_money

# Columns of a staged row, in the order the sink hands rows over.
STAGING_COLUMNS = (
    "position",
    "accrual_id",
    "source_event_id",
    "account_id",
    "transaction_ref",
    "entry_kind",
    "debit_book",
    "credit_book",
    "amount_minor",
    "currency",
    "reward_kind",
    "offer_id",
    "rule_version",
    "occurred_at",
    "explanation",
    "fingerprint",
    "beneficiary_id",
    "merchant_id",
    "purchase_ref",
    "sponsor_id",  # who funds the entry (accrual v6, migration 0016): NULL is the bank's own budget
)
LEDGER_COLUMNS = STAGING_COLUMNS[1:]  # a new entry's row in ledger_entries: all but the position
# Where a staged row holds the fields the journal reads.
POSITION, ID, SOURCE, ACCOUNT, REF, KIND, DEBIT, CREDIT, AMOUNT, CURRENCY, REWARD = range(11)
OFFER, OCCURRED, EXPLANATION, FINGERPRINT, PURCHASE = 11, 13, 14, 15, 18
assert STAGING_COLUMNS[REWARD] == "reward_kind" and STAGING_COLUMNS[FINGERPRINT] == "fingerprint"
assert STAGING_COLUMNS[OFFER] == "offer_id"
assert STAGING_COLUMNS[PURCHASE] == "purchase_ref"

# The columns the sink writes of a reconciliation item and of a purchase that earned nothing.
ITEM_COLUMNS = (
    "item_id",
    "source_event_id",
    "account_id",
    "transaction_ref",
    "purchase_ref",
    "kind",
    "amount_minor",
    "currency",
    "occurred_at",
    "detail",
    "fingerprint",
)
NOT_EARNED_COLUMNS = (
    "accrual_id",
    "source_event_id",
    "account_id",
    "transaction_ref",
    "reason",
    "detail",
    "basis_minor",
    "basis_currency",
    "occurred_at",
    "offer_id",
    "line_kind",
)

NOT_EARNED = "NOT_EARNED"
# The lines written to purchases_not_earned, under their line_kind (migration 0018): judged alike.
NOT_EARNED_LINES = frozenset({NOT_EARNED, REDEMPTION_REFUSED, WALLET_MARK})

_EXPLANATION_JSON = msgspec.json.Decoder()
ITEM_KIND = ITEM_COLUMNS.index("kind")  # where an item's row holds its kind
assert NOT_EARNED_COLUMNS[-2:] == ("offer_id", "line_kind")


# The columns both tables of lines that move no money begin with: the line's id, its event, account and transaction.
_LINE_HEAD = operator.itemgetter(ID, SOURCE, ACCOUNT, REF)
_LINE_ID, _LINE_ACCOUNT = 0, 2  # where those rows hold the line's id and account
assert ITEM_COLUMNS[:4] == ("item_id", "source_event_id", "account_id", "transaction_ref")
assert NOT_EARNED_COLUMNS[:4] == ("accrual_id", "source_event_id", "account_id", "transaction_ref")


def item_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A staged reconciliation item as its row of ``reconciliation_items`` (``ITEM_COLUMNS``): the columns the
    journal's ``INSERT`` of judged items reads out of the explanation in Postgres, read here instead."""
    get = _EXPLANATION_JSON.decode(row[EXPLANATION]).get
    return (
        *_LINE_HEAD(row),
        row[PURCHASE],
        get("reason"),
        get("basis_minor"),
        get("basis_currency"),
        row[OCCURRED],
        get("detail"),
        row[FINGERPRINT],
    )


def refusal_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A staged line that moves no money and is no reconciliation item (a purchase that earned nothing, a refused
    redemption, a wallet mark) as its row of ``purchases_not_earned`` (``NOT_EARNED_COLUMNS``): the columns the
    journal's ``INSERT`` of judged lines reads out of the explanation in Postgres, read here instead. A line's
    offer_id is the offer it is about where the record names one (a holdout line: migration 0013)."""
    get = _EXPLANATION_JSON.decode(row[EXPLANATION]).get
    return (
        *_LINE_HEAD(row),
        get("reason"),
        get("detail"),
        get("basis_minor"),
        get("basis_currency"),
        row[OCCURRED],
        row[OFFER],
        row[KIND],
    )


def first_copies(rows: Sequence[tuple[Any, ...]]) -> tuple[list[tuple[Any, ...]] | None, dict[tuple[str, str], str]]:
    """The batch with each (account, id) once: a row again later in the batch with the same fingerprint (the
    same line: an event redelivered, whose entries the worker sends again) is left out, as the journal's verdict would
    leave it. None when an id comes again with other content (a conflict: the batch is judged). With it, each kept line's
    fingerprint by its (account, id)."""
    first: dict[tuple[str, str], str] = {}
    kept: list[tuple[Any, ...]] = []
    for row in rows:
        key = (row[ACCOUNT], row[ID])
        held = first.get(key)
        if held is None:
            first[key] = row[FINGERPRINT]
            kept.append(row)
        elif held != row[FINGERPRINT]:
            return None, {}
    return kept, first


@dataclass(frozen=True, slots=True)
class Staged:
    """A batch of staged rows made ready to be written without looking (``stage``), before its transaction: the
    Python work of the write done ahead, while the previous batch's transaction runs, so that Postgres is handed
    each statement of this one as soon as it has answered the last."""

    rows: Sequence[tuple[Any, ...]]  # the batch as staged (``STAGING_COLUMNS``)
    lines: list[tuple[Any, ...]] | None  # ``first_copies`` of the rows: None when an id comes again with other content
    entries: list[tuple[Any, ...]]  # the lines that move money, as staged
    ledger: list[tuple[Any, ...]]  # their rows of ledger_entries (``LEDGER_COLUMNS``)
    refusals: list[tuple[Any, ...]]  # the purchases that earned nothing and the like (``NOT_EARNED_COLUMNS``)
    items: list[tuple[Any, ...]]  # the reconciliation items (``ITEM_COLUMNS``)
    moving: int  # the rows of the batch that move money (entries, each copy counted)
    seen: dict[tuple[str, str], str]  # each line's fingerprint by its (account, id); empty when ``lines`` is None


def stage(rows: Sequence[tuple[Any, ...]]) -> Staged:
    """The batch ``rows`` made ready for ``stream.store.journal.write_batch`` (``Staged``)."""
    moving = sum(1 for row in rows if moves_money(row[KIND]))
    lines, seen = first_copies(rows)
    entries: list[tuple[Any, ...]] = []
    refusals: list[tuple[Any, ...]] = []
    items: list[tuple[Any, ...]] = []
    for row in lines or ():
        kind = row[KIND]
        if kind == RECONCILIATION:
            items.append(item_row(row))
        elif kind in NOT_EARNED_LINES:
            refusals.append(refusal_row(row))
        else:
            entries.append(row)
    return Staged(rows, lines, entries, [row[1:] for row in entries], refusals, items, moving, seen)


def without(staged: Staged, keys: set[tuple[str, str]]) -> Staged:
    """``staged`` without the lines ``keys`` names by (account, id), every copy of each: what ``stage`` makes of the
    rows left, by filtering what it made (a reconciliation item or a refusal is not made from its explanation again).
    For a batch whose ``lines`` are not None (each id in it with one content)."""

    def kept(rows: Sequence[tuple[Any, ...]], account: int, line_id: int) -> list[tuple[Any, ...]]:
        return [row for row in rows if (row[account], row[line_id]) not in keys]

    assert staged.lines is not None
    rows = kept(staged.rows, ACCOUNT, ID)
    return Staged(
        rows,
        kept(staged.lines, ACCOUNT, ID),
        kept(staged.entries, ACCOUNT, ID),
        kept(staged.ledger, ACCOUNT - 1, ID - 1),  # an entry's row less its position
        kept(staged.refusals, _LINE_ACCOUNT, _LINE_ID),
        kept(staged.items, _LINE_ACCOUNT, _LINE_ID),
        sum(1 for row in rows if moves_money(row[KIND])),
        {key: fingerprint for key, fingerprint in staged.seen.items() if key not in keys},
    )


MEMORY_LINES = 25_000  # a journal connection remembers the lines of its last batches, between this many and twice this many


@dataclass(slots=True)
class Committed:
    """The lines a connection's last batches committed as the ledger holds them: each one's fingerprint by its
    (account, id), in two generations; when the newer holds ``MEMORY_LINES`` it becomes the older, and the older is
    forgotten (a line forgotten is looked up again, never wrongly left out)."""

    newer: dict[tuple[str, str], str] = field(default_factory=dict)
    older: dict[tuple[str, str], str] = field(default_factory=dict)

    def add(self, lines: dict[tuple[str, str], str]) -> None:
        self.newer.update(lines)
        if len(self.newer) >= MEMORY_LINES:
            self.older, self.newer = self.newer, {}

    def again(self, seen: dict[tuple[str, str], str]) -> set[tuple[str, str]]:
        """The keys of ``seen`` whose line (same fingerprint) is remembered."""
        found = {key for key in seen.keys() & self.newer.keys() if seen[key] == self.newer[key]}
        if self.older:
            found.update(key for key in seen.keys() & self.older.keys() if seen[key] == self.older[key])
        return found
