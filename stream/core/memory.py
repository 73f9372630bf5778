"""What an account remembers of its events, so that a redelivery at any distance changes nothing.

- Every event id stays with its transaction (``Txn.events``), or, with no transaction to
  keep it (a refund of a purchase never seen, a declined authorisation), in ``loose``, until the
  transaction is settled and its last event is older than the horizon (the chargeback horizon).
  Memory is bounded by the transactions still open, not by a window of events.
- ``loose`` keeps the last ``LOOSE_IDS_LIMIT`` of those ids at most, the earliest kept forgotten
  first. They are stored in the account's summary, one record: a card-testing run of thousands of
  declined authorisations on one card made it larger than Kafka takes, and the worker wrote it
  again forever. A redelivery of a forgotten one is decided again, into the same entry ids (a
  decline's ``NOT_EARNED`` line), which the ledger already holds.
- A transaction keeps ``TXN_EVENT_IDS_LIMIT`` event ids at most: the worker dead-letters a new
  event of a transaction holding that many (``crowded``) rather than decide it.
- The last ``RECENT_EVENTS_LIMIT`` events also keep the entries they produced (``recent``), so a
  redelivery re-emits them: a worker stopped after storing the state and before its entries were
  delivered loses nothing (the matcher keeps at most that many decisions undelivered). The worker
  lets go of those it knows delivered when it next stores the account (``stream.account_states``),
  so most accounts keep a few.
"""

from __future__ import annotations

from stream.core.account_index import TxnIndex, index_of
from stream.core.entries import Entry
from stream.core.events import CardEvent, EventType
from stream.core.lifecycle import earliest_due_ms
from stream.core.state import AccountState, Loose, Recent, Txn
from stream.core.working_copy import FOLLOW_UPS, AccountStep, purchase_ref

# How many recent events an account keeps with the entries they produced. A redelivery of one of
# them re-emits the same entries (same ids, a no-op downstream), so a worker stopped after storing
# the state and before its entries were delivered loses nothing. Idempotency does not depend on
# this window: every event id stays with its transaction for the transaction's whole life.
RECENT_EVENTS_LIMIT = 32
# How long a settled transaction is remembered after its last event (the chargeback horizon).
TRANSACTION_HORIZON_DAYS = 180
# The most ids of events with no transaction (``loose``) an account keeps: at most about 300 KB of
# its summary with ids of the 256 characters an input field may hold (stream.core.events), far more
# declines than a cardholder makes in the horizon.
LOOSE_IDS_LIMIT = 1024
# The most event ids one transaction keeps (authorisations, incremental ones, clearings, refunds...):
# one transaction is one stored row, carried in its account's summary when it changes. 4,415
# incremental authorisations with 200-character ids made that row larger than Kafka takes. A real
# purchase has a few events, a long hotel stay a few dozen.
TXN_EVENT_IDS_LIMIT = 256

# What the card processors send (the other types are the bank's instructions and time passing).
_CARD_TYPES = frozenset(
    {
        *FOLLOW_UPS,
        EventType.AUTHORIZATION,
        EventType.INCREMENTAL_AUTHORIZATION,
        EventType.AUTHORIZATION_REVERSAL,
        EventType.AUTHORIZATION_EXPIRY,
        EventType.CLEARING,
    }
)


def known(state: AccountState, event: CardEvent) -> tuple[str | None, tuple[Entry, ...]]:
    """The fingerprint the account holds for the event's id (None: a new event), and the entries
    to re-emit for it (while it is among the recent events). Looked up among the recent events,
    the loose ones, the event's transaction, and the account's other transactions (through their
    index, ``stream.core.account_index``)."""
    recent = state.recent.get(event.event_id)
    if recent is not None:
        return recent.fingerprint, recent.entries
    loose = state.loose.get(event.event_id)
    if loose is not None:
        return loose.fingerprint, ()
    home = state.txns.get(purchase_ref(event))
    if home is not None and event.event_id in home.events:
        return home.events[event.event_id], ()
    return index_of(state).fingerprint(event.event_id), ()


def adds_a_name(state: AccountState | None, event: CardEvent) -> bool:
    """Whether deciding a card event would have its account keep one more name in its summary
    (``stream.core.state_rows``): a transaction it does not hold yet, or the id of an event with no
    transaction (``loose``). A redelivery adds none."""
    if state is None or event.event_type not in _CARD_TYPES or purchase_ref(event) in state.txns:
        return False
    return known(state, event)[0] is None


def crowded(state: AccountState | None, event: CardEvent) -> int | None:
    """The event ids a card event's transaction holds when it holds ``TXN_EVENT_IDS_LIMIT`` and the
    event is not one of them (None: the event may join it, or it has no transaction yet). The bank's
    instructions about a transaction (a hold's release) are never refused."""
    txn = state.txns.get(purchase_ref(event)) if state is not None and event.event_type in _CARD_TYPES else None
    if txn is None or len(txn.events) < TXN_EVENT_IDS_LIMIT or event.event_id in txn.events:
        return None
    return len(txn.events)


def remember(
    state: AccountState, step: AccountStep, fingerprint: str, forget_before_ms: int, index: TxnIndex
) -> tuple[dict[str, Recent], dict[str, Loose], dict[str, Txn], tuple[str, ...]]:
    """After ``step`` decided its event: the account's new (recent, loose, txns) and the
    transactions forgotten. The event's id joins its transaction (or the loose ones), it joins the
    recent events with its entries, and what fell behind the horizon is forgotten. ``index``:
    derived from the state's (``stream.core.account_index.derive``), changed to describe the new
    transactions."""
    event = step.event
    ref = purchase_ref(event)
    loose = {k: v for k, v in state.loose.items() if v.occurred_ms >= forget_before_ms} if state.loose else {}
    home = None
    if ref in step.txns:
        txn = step.txn(ref)
        assert txn is not None
        txn.events = {**txn.events, event.event_id: fingerprint}
        txn.last_ms = max(txn.last_ms or 0, step.at_ms)
        home = ref
    elif step.at_ms >= forget_before_ms:
        loose[event.event_id] = Loose(fingerprint, step.at_ms)
        while len(loose) > LOOSE_IDS_LIMIT:
            del loose[next(iter(loose))]
    for changed in step.changed:  # before the horizon judges what is settled
        step.txns[changed].due_ms = earliest_due_ms(step.txns[changed])
    recent = dict(state.recent)
    recent[event.event_id] = Recent(fingerprint, tuple(step.entries))
    while len(recent) > RECENT_EVENTS_LIMIT:
        del recent[next(iter(recent))]
    # The settled transactions whose last event is older than the horizon are forgotten.
    txns, forgotten = index.advance(step.txns, step.owns_txns, step.changed, event.event_id, home, forget_before_ms)
    return recent, loose, txns, forgotten
