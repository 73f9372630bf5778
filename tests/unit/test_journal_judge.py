"""The journal's verdict on a batch (``stream.store.journal.judge``), from what the ledger holds under each row's
id and from the rows before it in the batch: new, a replay, the same row again, or a conflict (by rule: 1 the ledger
holds the id with other content, 2 a purchase that earned nothing holds it, 3 an earlier row of the batch has it
with other content), recorded in the order the first of each is kept."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from stream.store.journal import judge
from stream.store.staged_rows import STAGING_COLUMNS


def row(index: int, accrual_id: str, fingerprint: str, kind: str = "PENDING_CREATED", **explanation: Any) -> tuple[Any, ...]:
    values = dict.fromkeys(STAGING_COLUMNS)
    values.update(
        position=10 + index,
        accrual_id=accrual_id,
        account_id="acct-1",
        entry_kind=kind,
        fingerprint=fingerprint,
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        explanation=json.dumps({"reason": "earned", "detail": "1%", **explanation}),
    )
    return tuple(values[c] for c in STAGING_COLUMNS)


def test_nothing_held_and_each_id_once_is_all_new() -> None:
    rows = [row(0, "e1#0", "f1"), row(1, "e2#0", "f2", "NOT_EARNED")]
    verdict = judge(rows, {}, repeats=False)
    assert (verdict.conflicts, verdict.new, verdict.refused) == ([], [0, 1], frozenset())


def test_an_id_the_ledger_holds_is_a_replay_with_its_content_and_a_conflict_with_other_content() -> None:
    rows = [row(0, "e1#0", "f1"), row(1, "e2#0", "f2"), row(2, "e3#0", "f3")]
    held = {0: ("PENDING_CREATED", "f1", None, None, None), 2: ("CONFIRMED", "other", None, None, None)}
    verdict = judge(rows, held, repeats=False)
    assert verdict.new == [1]  # the row nothing is held under is written, whatever its neighbours
    assert verdict.conflicts == [(1, 2, 2, "CONFIRMED")] and verdict.refused == {2}


def test_a_purchase_that_earned_nothing_holds_its_id_against_an_entry_and_another_refusal() -> None:
    rows = [
        row(0, "e1#0", "f1"),  # an entry under a refusal's id
        row(1, "e2#0", "f2", "NOT_EARNED", reason="declined", detail="no"),  # the same refusal: a replay
        row(2, "e3#0", "f3", "NOT_EARNED", reason="declined", detail="other"),  # another one under its id
        row(3, "e4#0", "f4", "NOT_EARNED"),  # a refusal under an entry's id
    ]
    refusal = (None, None, True, "declined", "no")
    held = {0: refusal, 1: refusal, 2: refusal, 3: ("HELD", "f0", None, None, None)}
    verdict = judge(rows, held, repeats=False)
    assert verdict.new == []
    assert verdict.conflicts == [(1, 3, 3, "HELD"), (2, 0, 0, "NOT_EARNED"), (2, 2, 2, "NOT_EARNED")]


def test_the_same_id_twice_in_a_batch_the_first_is_held_the_same_row_again_is_no_conflict() -> None:
    rows = [
        row(0, "e1#0", "f1"),
        row(1, "e1#0", "f1"),  # the same entry again
        row(2, "e1#0", "f9", "CONFIRMED"),  # other content: against the first, and the second
        row(3, "e2#0", "f2", "NOT_EARNED"),
        row(4, "e2#0", "f5"),  # an entry under the refusal's id, in the same batch
    ]
    verdict = judge(rows, {}, repeats=True)
    assert verdict.new == [0, 3] and verdict.refused == {2, 4}
    assert verdict.conflicts == [(3, 2, 0, "PENDING_CREATED"), (3, 2, 1, "PENDING_CREATED"), (3, 4, 3, "NOT_EARNED")]


def test_a_row_in_conflict_with_the_ledger_and_the_batch_is_recorded_by_the_ledger_first() -> None:
    rows = [row(0, "e1#0", "f1"), row(1, "e1#0", "f2")]
    held = {0: ("PENDING_CREATED", "f0", None, None, None), 1: ("PENDING_CREATED", "f0", None, None, None)}
    verdict = judge(rows, held, repeats=True)
    assert verdict.new == []
    assert verdict.conflicts == [(1, 0, 0, "PENDING_CREATED"), (1, 1, 1, "PENDING_CREATED"), (3, 1, 0, "PENDING_CREATED")]
