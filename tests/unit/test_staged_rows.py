"""A staged batch less the lines a connection already committed (``stream.store.staged_rows.without``, what the
journal's ``_less_committed`` leaves of a batch) is exactly what staging the rows left makes: every table's rows,
the count of rows that move money, and each line's fingerprint, in the batch's order."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.store.staged_rows import ACCOUNT, ID, NOT_EARNED, RECONCILIATION, STAGING_COLUMNS, stage, without

KINDS = ("PENDING_CREATED", "CONFIRMED", NOT_EARNED, RECONCILIATION, "CLAWED_BACK")


def row(position: int, account: str, line: str, kind: str) -> tuple[Any, ...]:
    values = dict.fromkeys(STAGING_COLUMNS)
    values.update(
        position=position,
        accrual_id=line,
        source_event_id=f"ev-{line}",
        account_id=account,
        transaction_ref=f"tx-{line}",
        entry_kind=kind,
        amount_minor=position,
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        explanation=json.dumps({"reason": "earned", "detail": line, "basis_minor": 100, "basis_currency": "EUR"}),
        fingerprint=f"fp-{account}-{line}-{kind}",
        purchase_ref=f"p-{line}",
    )
    return tuple(values[c] for c in STAGING_COLUMNS)


# A batch: lines by (account, id, kind), some of them twice (an event redelivered within the batch: the same line).
lines = st.lists(
    st.tuples(st.sampled_from(["a1", "a2", "a3"]), st.integers(0, 12), st.sampled_from(KINDS)),
    max_size=40,
    unique_by=lambda line: line[:2],
)


@settings(max_examples=200, deadline=None)
@given(lines, st.data())
def test_leaving_out_committed_lines_is_staging_the_rows_left(batch: list[tuple[str, int, str]], data: st.DataObject) -> None:
    copies = data.draw(st.lists(st.sampled_from(batch), max_size=10)) if batch else []
    rows = [row(n, account, f"e{line}#0", kind) for n, (account, line, kind) in enumerate(batch + copies)]
    staged = stage(rows)
    keys = sorted({(r[ACCOUNT], r[ID]) for r in rows})
    committed = set(data.draw(st.lists(st.sampled_from(keys), unique=True)) if keys else [])

    left = without(staged, committed)

    assert left == stage([r for r in rows if (r[ACCOUNT], r[ID]) not in committed])


def test_a_batch_less_one_of_each_kind_of_line() -> None:
    rows = [
        row(0, "a1", "e1#0", "PENDING_CREATED"),
        row(1, "a1", "e2#0", NOT_EARNED),
        row(2, "a2", "e3#0", RECONCILIATION),
        row(3, "a2", "e4#0", "CONFIRMED"),
        row(4, "a1", "e1#0", "PENDING_CREATED"),  # the first line again: left out with it
    ]
    staged = stage(rows)
    left = without(staged, {("a1", "e1#0"), ("a1", "e2#0"), ("a2", "e3#0")})
    assert [r[ID] for r in left.rows] == [r[ID] for r in left.entries] == ["e4#0"]
    assert left.ledger == [rows[3][1:]] and left.refusals == [] and left.items == []
    assert (staged.moving, left.moving) == (3, 1)
    assert left.seen == {("a2", "e4#0"): rows[3][STAGING_COLUMNS.index("fingerprint")]}
