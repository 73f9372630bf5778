"""The estimate of what a state takes in memory (``stream.core.state_memory``), which bounds the
worker's state cache, held to what states read back from their rows do take (``tracemalloc``)."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Iterator

import msgspec
import pytest

from stream.backtest import replay
from stream.core.offers import OfferBook
from stream.core.state import AccountState, Payout
from stream.core.state_memory import PAYOUT_BYTES, STATE_BYTES, memory_of
from stream.core.state_rows import assemble, decode_summary, encode
from stream.core.state_writes import split
from stream.localstack.chaos_log import chaos_offers
from stream.simulate import generate
from stream.simulate.lifecycle import Scenario


def _simulated_states() -> dict[str, AccountState]:
    """The states of the simulator's lifecycle mix (re-sent events, conflicts, bursts) as the pure
    engine leaves them: a few heavy accounts and many light ones."""
    scenario = Scenario(seed=7, accounts=120, purchases=3_000, bad_ratio=0.0, duplicate_ratio=0.05, conflict_ratio=0.002)
    return replay(generate(scenario), OfferBook.of(chaos_offers())).states


def _recent_let_go(state: AccountState, kept: int = 2) -> AccountState:
    """The state once the worker let its delivered recent events go (``AccountStates._let_go``)."""
    return msgspec.structs.replace(state, recent=dict(list(state.recent.items())[-kept:]))


def _measured(states: dict[str, AccountState]) -> Iterator[tuple[AccountState, int]]:
    """Each state stored in rows and read back as the worker reads it, kept as its cache keeps it, with
    the bytes that took. Everything is read back once first, so that the texts states share (kinds,
    currencies, offers) are counted as in a worker holding many states: once, not in the first state."""
    stored = {}
    for account_id, state in states.items():
        writes = split(account_id, None, state, before_in_rows=False)
        stored[account_id] = (encode(writes.summary), {key: encode(row) for key, row in writes.rows.items()})

    def read(account_id: str) -> AccountState:
        summary, rows = stored[account_id]
        state = assemble(account_id, decode_summary(summary), rows.get)
        assert state is not None
        return state

    warm = [read(account_id) for account_id in stored]
    kept: list[object] = []
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        for account_id in stored:
            before = tracemalloc.get_traced_memory()[0]
            state = read(account_id)
            kept.append((state, True, frozenset(), {event_id: n for n, event_id in enumerate(state.recent)}))
            yield state, tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        gc.enable()
        del warm, kept


def _estimate_over_measure(states: dict[str, AccountState]) -> float:
    pairs = list(_measured(states))
    return sum(memory_of(state) for state, _ in pairs) / sum(taken for _, taken in pairs)


def test_the_estimate_holds_for_accounts_made_of_transactions_and_of_recent_events_alike() -> None:
    """The cache's bound is in bytes only if the estimate follows the states' mix: as the engine makes
    them (their last 32 recent events and their entries) and once their recent events are let go
    (mostly transactions, as in a worker whose decisions were delivered), the estimate is within a
    fifth of what they take, and the two within a tenth of each other. Counted in items (one per
    transaction, recent event and entry), the second took 1.8 times the bytes an item of the first."""
    states = _simulated_states()
    assert sum(len(state.txns) for state in states.values()) > 2_000
    with_recent = _estimate_over_measure(states)
    transactions = _estimate_over_measure({account: _recent_let_go(state) for account, state in states.items()})
    assert 0.8 < with_recent < 1.2 and 0.8 < transactions < 1.2, (with_recent, transactions)
    assert with_recent / transactions == pytest.approx(1.0, abs=0.1)


def test_an_empty_state_and_its_payouts_take_what_the_estimate_says() -> None:
    """The parts the simulator's mix does not exercise: the state itself, and payouts."""
    empty = {f"acct-{n:06d}": AccountState(wallet={"CASH:EUR": 100}, clock_ms=n) for n in range(200)}
    assert _estimate_over_measure(empty) == pytest.approx(1.0, abs=0.2)
    assert all(memory_of(state) == STATE_BYTES for state in empty.values())
    paying = {
        account: msgspec.structs.replace(
            state,
            payouts={
                f"payout-{n:02d}-{account}": Payout(
                    1_000 + n, "EUR", f"run-{n:02d}", 1_800_000_000_000, "CONFIRMED", f"answer-{n}"
                )
                for n in range(20)
            },
        )
        for account, state in empty.items()
    }
    assert _estimate_over_measure(paying) == pytest.approx(1.0, abs=0.2)
    assert memory_of(next(iter(paying.values()))) == STATE_BYTES + 20 * PAYOUT_BYTES
