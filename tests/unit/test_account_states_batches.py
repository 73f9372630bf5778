"""A batch's writes per account (``stream.account_states``): one summary per account and batch,
carrying every row the batch wrote, then the rows, then the deletions. Whatever prefix of a batch's
writes the changelog holds when a worker dies, the state read back is the one before the batch or
the one after it, never a mix of the two."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from stream.account_states import AccountStates
from stream.changelog_table import DELETED
from stream.core.events import CardEvent
from stream.core.memory import RECENT_EVENTS_LIMIT
from stream.core.payouts import place_holder
from stream.core.rules import decide
from stream.core.state import AccountState
from stream.core.state_memory import memory_of
from stream.core.state_rows import assemble, decode_summary, is_summary_key
from stream.metrics import STATE_CACHE_ACCOUNTS, STATE_CACHE_BYTES
from tests.unit.test_rules_properties import OFFER_BOOKS, OFFER_NAMES, PROFILE, SEEDED, event_sequences, fillers

ACCOUNT = "acct-1"
PARTITION = 2


class StagedTable:
    """The part of ``ChangelogTable`` the account states use: what is staged, in order, and a
    store holding what was settled."""

    def __init__(self) -> None:
        self.store: dict[str, bytes] = {}
        self.staged: list[tuple[str, Any, int]] = []

    def stage(self, key: str, value: Any, partition: int) -> None:
        self.staged.append((key, value, partition))

    def get(self, key: str) -> Any:
        return self.store.get(key)

    def get_many(self, keys: list[str], partition: int) -> list[Any]:
        return [self.store.get(key) for key in keys]

    def keys(self) -> list[str]:
        return list(self.store)

    def heads(self, partition: int, separator: str, partition_of: Callable[[str], int]) -> list[tuple[str, bytes]]:
        return [(key, value) for key, value in self.store.items() if separator not in key and partition_of(key) == partition]

    def settle(self, upto: int | None = None) -> None:
        """The changelog has the first ``upto`` staged writes (all: None), read back into a store."""
        for key, value, _ in self.staged[:upto]:
            if value is DELETED:
                self.store.pop(key, None)
            else:
                self.store[key] = value
        self.staged.clear()


def read_back(store: dict[str, bytes]) -> AccountState | None:
    return assemble(ACCOUNT, decode_summary(store.get(ACCOUNT)), store.get)


@SEEDED
@given(offers_name=OFFER_NAMES, events=event_sequences(multi_clearing=True), data=st.data())
def test_any_cut_of_a_batch_reads_back_as_before_or_after_it(
    offers_name: str, events: list[CardEvent], data: st.DataObject
) -> None:
    offers = OFFER_BOOKS[offers_name]
    sequence = list(events) + fillers(data.draw(st.sampled_from((0, 3, RECENT_EVENTS_LIMIT + 2))), start=1_000)
    table = StagedTable()
    accounts = AccountStates(table, partitions=4)  # type: ignore[arg-type]
    before: AccountState | None = None
    held: set[str] = set()  # the event holding the account's place, kept once known delivered
    position = 0
    while position < len(sequence):
        size = data.draw(st.integers(1, 8), label="batch size")
        for event in sequence[position : position + size]:
            state = accounts.get(ACCOUNT)
            after = decide(event, offers, state, PROFILE).state
            if after is not state:
                accounts.write(ACCOUNT, state, after, PARTITION)
        position += size
        decided = accounts.get(ACCOUNT)
        recent = dict(decided.recent) if decided is not None else {}
        # Some of the account's events are known delivered (any of them: those of this batch are kept all the same).
        delivered = sorted(data.draw(st.sets(st.sampled_from(sorted(recent)))) if recent else ())
        written = ACCOUNT in accounts.pending  # an account not written in the batch keeps its state as it is
        handed = accounts.hand_over(lambda account_id, delivered=delivered: delivered)
        expected = accounts.get(ACCOUNT)
        if expected is not None and written:
            earlier = set(before.recent) if before is not None else set()
            known = (set(delivered) | held) & earlier & set(recent)
            assert set(expected.recent) == set(recent) - (known - {place_holder(recent)})
            held = {place_holder(recent)} & known  # let go at a later hand-over once another holds the place
            assert place_holder(expected.recent) == place_holder(recent)  # a wallet opening's place stays
            assert accounts.cached_bytes == sum(memory_of(held[0]) for held in accounts._whole.values())
        staged = list(table.staged)
        assert handed == ([ACCOUNT] if staged else [])
        if not staged:
            continue
        summaries = [key for key, _, _ in staged if is_summary_key(key)]
        assert summaries == [ACCOUNT] and staged[0][0] == ACCOUNT  # one summary, first
        assert {partition for _, _, partition in staged} == {PARTITION}
        for cut in range(len(staged)):
            trial = dict(table.store)
            for key, value, _ in staged[:cut]:
                if value is DELETED:
                    trial.pop(key, None)
                else:
                    trial[key] = value
            assert read_back(trial) == (before if cut == 0 else expected)
        if data.draw(st.integers(0, 4)) == 0:
            # the worker dies with a part of the batch on the changelog: a new one reads it back
            table.settle(upto=data.draw(st.integers(1, len(staged))))
            accounts = AccountStates(table, partitions=4)  # type: ignore[arg-type]
            held = set()  # what it knew of deliveries gone with it
        else:
            table.settle()
        assert read_back(table.store) == expected
        before = expected


def test_a_pending_state_is_read_even_when_the_memory_let_it_go() -> None:
    """The states kept whole are bounded; one whose writes wait for the flush is still the one read."""
    table = StagedTable()
    accounts = AccountStates(table, partitions=4, cached=1)  # type: ignore[arg-type]
    offers = OFFER_BOOKS["grocery-5"]
    first, second = fillers(2, start=0)
    after = decide(first, offers, None, PROFILE).state
    accounts.write(ACCOUNT, None, after, PARTITION)
    accounts._keep("acct-2", after, True, frozenset(), {})  # another account takes the only place
    assert accounts.get(ACCOUNT) is after
    then = decide(second, offers, after, PROFILE).state
    accounts.write(ACCOUNT, after, then, PARTITION)
    assert accounts.hand_over() == [ACCOUNT]
    table.settle()
    assert read_back(table.store) == then


def test_a_dropped_batch_forgets_its_accounts() -> None:
    table = StagedTable()
    accounts = AccountStates(table, partitions=4)  # type: ignore[arg-type]
    [event] = fillers(1, start=0)
    accounts.write(ACCOUNT, None, decide(event, OFFER_BOOKS["grocery-5"], None, PROFILE).state, PARTITION)
    accounts.drop_pending()
    assert accounts.pending == {} and accounts.get(ACCOUNT) is None


def test_the_states_kept_in_memory_are_bounded_by_the_memory_they_take_not_by_their_number() -> None:
    """A few large states take the room of many small ones: the least recently used leave first,
    and the bytes counted follow every way a state leaves (forgotten, erased, replaced)."""
    table = StagedTable()
    offers = OFFER_BOOKS["grocery-5"]
    small = decide(fillers(1, start=0)[0], offers, None, PROFILE).state
    large: AccountState | None = None
    for event in fillers(12, start=100):
        large = decide(event, offers, large, PROFILE).state
    assert large is not None
    size, small_size = memory_of(large), memory_of(small)
    assert sum(len(r.entries) for r in large.recent.values()) > 0, "the entries a redelivery re-emits count too"
    assert size > 5 * small_size
    accounts = AccountStates(table, partitions=4, cached=2 * size)  # type: ignore[arg-type]
    for n in range(2 * size // small_size):
        accounts._keep(f"small-{n}", small, True, frozenset(), {})
    assert accounts.cached_bytes <= 2 * size
    accounts._keep("large-1", large, True, frozenset(), {})
    accounts._keep("large-2", large, True, frozenset(), {})
    assert list(accounts._whole) == ["large-1", "large-2"], "the small ones, used least recently, left"
    assert accounts.cached_bytes == 2 * size
    accounts.get("large-1")  # used: now the most recent
    accounts._keep("small-x", small, True, frozenset(), {})
    assert list(accounts._whole) == ["large-1", "small-x"]
    accounts._keep("small-x", large, True, frozenset(), {})  # replaced by a larger state
    assert accounts.cached_bytes == 2 * size
    accounts.observe_memory()  # what operators see of it (README, Metrics)
    assert STATE_CACHE_BYTES._value.get() == 2 * size and STATE_CACHE_ACCOUNTS._value.get() == 2
    accounts.forget_accounts(["large-1"])
    accounts.erase("small-x", PARTITION)
    assert accounts.cached_bytes == 0 and not accounts._whole
    accounts.observe_memory()
    assert STATE_CACHE_BYTES._value.get() == STATE_CACHE_ACCOUNTS._value.get() == 0


def test_an_account_whose_stored_summary_is_full_is_known_full_when_read_back_and_no_longer_once_it_shrinks(
    monkeypatch: Any,
) -> None:
    """``refusal``: a worker started again reads the account's summary from its store and knows it full
    at once; a state stored smaller (settled transactions forgotten) names new transactions again."""
    from stream import account_states
    from stream.core.state import Txn

    monkeypatch.setattr(account_states, "FULL_SUMMARY_BYTES", 600)
    offers = OFFER_BOOKS["grocery-5"]
    events = fillers(40, start=0)
    table = StagedTable()
    states = AccountStates(table, partitions=8)  # type: ignore[arg-type]
    state = None
    for event in events:
        after = decide(event, offers, state, PROFILE).state
        states.write(ACCOUNT, state, after, PARTITION)
        state = after
    states.hand_over()
    table.settle()
    new = fillers(1, start=1_000)[0]
    assert new.transaction_ref not in state.txns
    assert states.refusal(ACCOUNT, new, state) is not None
    assert states.refusal(ACCOUNT, events[0], state) is None  # a redelivery names nothing new

    started_again = AccountStates(table, partitions=8)  # type: ignore[arg-type]
    read = started_again.get(ACCOUNT)
    detail = started_again.refusal(ACCOUNT, new, read)
    assert detail is not None and "600 at most" in detail
    assert started_again.refusal("acct-2", new, None) is None

    smaller = AccountState(txns={ref: Txn(status="cleared", currency="EUR") for ref in list(read.txns)[:2]})
    started_again.write(ACCOUNT, read, smaller, PARTITION)
    started_again.hand_over()
    assert started_again.refusal(ACCOUNT, new, smaller) is None
