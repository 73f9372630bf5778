"""What an account's state takes in a worker's memory, estimated from what it holds.

The worker keeps the least recently used states whole in memory up to a budget in bytes
(``stream.account_states``, the setting ``WORKER_STATE_CACHE_MB``). Counted in items (a
transaction, a recent event, an entry each one), the same count held ever more bytes as the
accounts aged: the items became transactions (about 1.3 KB each) where they had been entries
(about 0.6 KB) and accounts (about 1.2 KB of their own). On the benchmark's long run the cached
states, their objects walked, took 1,360 bytes an item at 120 s and 1,500 at 314 s (README,
Performance).

Each part's bytes below were measured with ``tracemalloc`` on states read back from their rows as
the worker reads them (``stream.core.state_rows.assemble``: repeated texts shared), on the
simulator's lifecycle mix, with the cache's own entry for the state (its slots and the tuple
holding them). ``tests/unit/test_state_memory.py`` measures states again and holds the estimate to
the measure, for accounts made of transactions and for accounts made of recent events alike.
"""

from __future__ import annotations

from stream.core.account_index import counts_of, tally
from stream.core.state import AccountState

STATE_BYTES = 1_200  # the state, its maps and records, and the cache's entry for it
TXN_BYTES = 775  # a transaction: its record, its name, its place in the state's map
TXN_EVENT_BYTES = 160  # each event id a transaction keeps, with its fingerprint
SHARE_BYTES = 260  # each share of a transaction's cashback (an offer's part)
RECENT_BYTES = 420  # a recent event: its record, id, fingerprint and slot
ENTRY_BYTES = 600  # each entry a recent event keeps for a redelivery
LOOSE_BYTES = 260  # an event id with no transaction (a decline, a refund of an unseen purchase)
LOT_BYTES = 430  # points or store credit that expire together
CAP_BYTES = 270  # a cap's count in one period
CARRY_BYTES = 80  # a rate's remainder carried to the next purchase
PAYOUT_BYTES = 460  # an open or recently answered payout


def memory_of(state: AccountState) -> int:
    """The bytes ``state`` takes in memory, read back and kept whole, estimated part by part. The
    transactions' event ids and shares are counted by the index the engine keeps beside a state it
    decided (``stream.core.account_index.counts_of``); a state without one (read from the store) has
    every transaction read: O(transactions)."""
    counts = counts_of(state)
    events, shares = counts if counts is not None else tally(state.txns)
    recent = state.recent.values()
    return (
        STATE_BYTES
        + TXN_BYTES * len(state.txns)
        + TXN_EVENT_BYTES * events
        + SHARE_BYTES * shares
        + RECENT_BYTES * len(state.recent)
        + ENTRY_BYTES * sum(len(held.entries) for held in recent)
        + LOOSE_BYTES * len(state.loose)
        + LOT_BYTES * len(state.lots)
        + CAP_BYTES * sum(len(periods) for periods in state.caps.values())
        + CARRY_BYTES * len(state.carry)
        + PAYOUT_BYTES * len(state.payouts)
    )
