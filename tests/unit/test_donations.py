"""The arithmetic of a donation remittance run (stream.core.donations), the answers' checks, and the schedule's
due times (stream.donations.due)."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from stream.core.donations import (
    Remittance,
    answer_problem,
    owed,
    remittance_id,
    remittance_id_parts,
    remittances,
)
from stream.donations import due

RUN = "2026-12-03T0200Z"


def test_a_charity_is_owed_what_was_given_less_what_was_sent_per_currency() -> None:
    given = {("red-cross", "EUR"): 1_250, ("red-cross", "JPY"): 900, ("unicef", "EUR"): 80}
    sent = {("red-cross", "EUR"): 1_000}
    assert owed(given, sent) == {("red-cross", "EUR"): 250, ("red-cross", "JPY"): 900, ("unicef", "EUR"): 80}
    assert remittances(RUN, given, sent, {"EUR": 100}, 500) == [
        Remittance(f"d:{RUN}:red-cross:EUR", "red-cross", "EUR", 250),
        Remittance(f"d:{RUN}:red-cross:JPY", "red-cross", "JPY", 900),
    ]  # unicef's 0.80 EUR is under the EUR minimum: owed at a later run


def test_the_minimum_is_the_currency_named_else_the_default_else_never() -> None:
    given = {("c", "EUR"): 100, ("c", "USD"): 100}
    assert [r.currency for r in remittances(RUN, given, {}, {"EUR": 100}, None)] == ["EUR"]
    assert [r.currency for r in remittances(RUN, given, {}, {"EUR": 101}, 100)] == ["USD"]
    assert remittances(RUN, given, {}, {}, None) == []


def test_nothing_new_given_sends_nothing_and_a_rejection_makes_it_owed_again() -> None:
    given = {("c", "EUR"): 5_000}
    first = remittances(RUN, given, {}, {}, 1)
    assert [r.amount_minor for r in first] == [5_000]
    assert remittances("r2", given, {("c", "EUR"): 5_000}, {}, 1) == []  # sent (requested or confirmed)
    assert [r.amount_minor for r in remittances("r3", given, {}, {}, 1)] == [5_000]  # rejected: not counted as sent


def test_a_clawback_after_a_remittance_leaves_the_charity_owing_until_new_donations_cover_it() -> None:
    sent = {("c", "EUR"): 1_000}
    assert owed({("c", "EUR"): 700}, sent) == {("c", "EUR"): -300}
    assert remittances("r2", {("c", "EUR"): 700}, sent, {}, 1) == []
    assert remittances("r3", {("c", "EUR"): 1_200}, sent, {}, 1) == [Remittance("d:r3:c:EUR", "c", "EUR", 200)]


@given(
    st.lists(st.integers(min_value=-500, max_value=5_000), min_size=1, max_size=8),
    st.lists(st.booleans(), min_size=8, max_size=8),
)
def test_runs_never_send_more_than_was_ever_given_and_leave_nothing_owed_after_an_accepted_run(
    donations: list[int], rejected: list[bool]
) -> None:
    """Donations (and clawbacks) arrive between runs; some remittances are rejected: what was sent and not
    rejected never exceeds the most that was ever given, and an accepted run leaves nothing owed."""
    given, sent, peak = 0, 0, 0
    for index, amount in enumerate(donations):
        given += amount
        peak = max(peak, given)
        before = sent
        for remittance in remittances(f"r{index}", {("c", "EUR"): given}, {("c", "EUR"): sent}, {}, 1):
            assert remittance.amount_minor == given - before > 0
            sent += 0 if rejected[index] else remittance.amount_minor
        assert sent == (before if rejected[index] else max(given, before))
        assert sent <= peak


def test_remittance_ids_name_the_run_the_charity_and_the_currency_whatever_the_charity_id_holds() -> None:
    assert remittance_id(RUN, "org:red-cross", "EUR") == f"d:{RUN}:org:red-cross:EUR"
    assert remittance_id_parts(f"d:{RUN}:org:red-cross:EUR") == (RUN, "org:red-cross", "EUR")
    for bad in ("p:r:a:EUR", f"d:{RUN}::EUR", f"d:{RUN}:c:XXX", "d::c:EUR", "d"):
        assert remittance_id_parts(bad) is None, bad


def _answer(**changes: object) -> dict[str, object]:
    answer: dict[str, object] = {
        "payout_id": f"d:{RUN}:red-cross:EUR",
        "charity_id": "red-cross",
        "status": "REJECTED",
        "reason_code": "account_closed",
        "answered_at": datetime(2026, 12, 3, tzinfo=UTC),
    }
    return answer | changes


def test_an_answer_is_checked_field_by_field_and_never_quoted() -> None:
    assert answer_problem(_answer()) is None
    assert answer_problem(_answer(charity_id="unicef")) == "payout_id: names another charity than charity_id"
    assert str(answer_problem(_answer(payout_id="p:r:acct-1:EUR"))).startswith("payout_id: not a remittance id")
    assert answer_problem(_answer(status="PAID")) == "status: not CONFIRMED or REJECTED"
    assert str(answer_problem(_answer(reason_code="no way"))).startswith("reason_code:")
    problem = answer_problem(_answer(reason_code="4111111111111111"))
    assert problem == "reason_code: looks like a card number" and "4111" not in problem


def test_the_schedule_runs_each_time_passed_since_the_last_look_once() -> None:
    schedule = (2 * 60, 14 * 60)  # 02:00 and 14:00 UTC
    at = datetime(2026, 12, 3, 1, 59, 30, tzinfo=UTC)
    assert due(schedule, at, datetime(2026, 12, 3, 2, 0, 0, tzinfo=UTC)) == [datetime(2026, 12, 3, 2, 0, tzinfo=UTC)]
    assert due(schedule, datetime(2026, 12, 3, 2, 0, 0, tzinfo=UTC), datetime(2026, 12, 3, 2, 0, 30, tzinfo=UTC)) == []
    assert due(schedule, at, datetime(2026, 12, 4, 3, 0, tzinfo=UTC)) == [
        datetime(2026, 12, 3, 2, 0, tzinfo=UTC),
        datetime(2026, 12, 3, 14, 0, tzinfo=UTC),
        datetime(2026, 12, 4, 2, 0, tzinfo=UTC),
    ]
    assert due((), at, datetime(2026, 12, 9, tzinfo=UTC)) == []
