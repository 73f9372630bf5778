"""The indexes a clock tick reads (``stream.due_times``): always what a scan of every account would
answer, whatever the sequence of changes, and a tick's cost set by what is due, not by the accounts."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.due_times import DueTimes, TickedAt

ACCOUNTS = st.sampled_from([f"acct-{i:02d}" for i in range(12)])
TIMES = st.integers(min_value=0, max_value=40)
CHANGES = st.lists(st.tuples(st.sampled_from(["set", "discard", "ask"]), ACCOUNTS, st.none() | TIMES), max_size=300)


def scanned(when: dict[str, int], now_ms: int) -> list[str]:
    """What a tick read before the index: every account's time, the due ones sorted."""
    return sorted((a for a, t in when.items() if t <= now_ms), key=lambda a: (when[a], a))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(ACCOUNTS, TIMES), CHANGES)
def test_the_accounts_due_are_always_those_a_scan_finds_the_earliest_first(
    start: dict[str, int], changes: list[tuple[str, str, int | None]]
) -> None:
    """From the times a partition's store holds (``start``, taken at once), through any changes."""
    index, when = DueTimes(dict(start)), dict(start)
    for kind, account, value in changes:
        if kind == "set":
            index.set(account, value)
            if value is None:
                when.pop(account, None)
            else:
                when[account] = value
        elif kind == "discard":
            index.discard(account)
            when.pop(account, None)
        else:
            now = value if value is not None else 20
            assert index.due_by(now) == scanned(when, now)
        assert len(index) == len(when)
        assert {a: index.get(a) for a in when} == when
    for now in (-1, 0, 10, 40, 2**62):
        assert index.due_by(now) == scanned(when, now)


def test_an_account_due_stays_due_until_its_time_changes() -> None:
    index = DueTimes()
    index.set("a", 5)
    index.set("b", 3)
    assert index.due_by(10) == ["b", "a"]
    assert index.due_by(10) == ["b", "a"]  # asking does not take them out
    index.set("b", 30)
    index.set("a", None)
    assert index.due_by(10) == []
    assert index.due_by(30) == ["b"]
    assert "a" not in index and "b" in index


def test_the_heap_stays_within_about_twice_the_accounts_however_often_times_change() -> None:
    index = DueTimes()
    for step in range(20_000):
        index.set(f"acct-{step % 50}", step)
    assert len(index) == 50
    assert len(index._heap) <= 2 * 50 + 64 + 1
    assert index.due_by(20_000) == [f"acct-{i}" for i in range(50)]  # their last times: 19,950 .. 19,999


def test_a_tick_costs_what_is_due_not_what_the_partition_holds() -> None:
    """Ten accounts due among 300,000: a tick's look-up is far cheaper than reading every account's
    time, as it was (a scan of the mapping and a sort of the due ones)."""
    index, when = DueTimes(), {}
    for i in range(300_000):
        due_ms = 10 if i % 30_000 == 0 else 10_000 + i
        index.set(f"acct-{i}", due_ms)
        when[f"acct-{i}"] = due_ms
    started = time.perf_counter()
    for _ in range(20):
        assert len(index.due_by(100)) == 10
    indexed = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(20):
        assert len(scanned(when, 100)) == 10
    scanning = time.perf_counter() - started
    assert indexed * 20 < scanning, (indexed, scanning)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["set", "discard"]), ACCOUNTS, st.integers(0, 40)), max_size=200), st.integers(0, 45))
def test_the_accounts_a_tick_changed_since_an_offset_are_those_a_scan_finds(
    changes: list[tuple[str, str, int]], offset: int
) -> None:
    ticked, at = TickedAt(), {}
    for kind, account, value in changes:
        if kind == "set":
            ticked.set(account, value)
            at[account] = value
        else:
            ticked.discard(account)
            at.pop(account, None)
    assert ticked.since(offset) == sorted(a for a, o in at.items() if o >= offset)
    assert len(ticked) == len(at)


def test_a_tick_read_for_the_first_time_finds_no_account_without_reading_them() -> None:
    ticked = TickedAt()
    for i in range(1_000):
        ticked.set(f"acct-{i}", i)
    ticked._at = _Unreadable(ticked._at)  # any read of the accounts fails the test
    assert ticked.since(1_000) == []


class _Unreadable(dict[str, int]):
    def items(self):  # type: ignore[override]
        raise AssertionError("a first reading of a tick read the accounts")
