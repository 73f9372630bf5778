"""Reconciliation (issue 11): what operations count and list to find money the processor could not follow.

What is recorded, and why this way:

- **Items**: a refund, a chargeback or a chargeback reversal of a purchase the worker never saw cleared
  (``unknown_refund``, ``unknown_chargeback``, ``unknown_chargeback_reversal``), and every clearing without an
  authorisation the worker saw (``force_post``, whether or not it earned). The rules engine records each as a
  record on the accruals topic (accrual v4's RECONCILIATION kind, ``stream.core.working_copy.AccountStep.reconcile``)
  under ``<event_id>#reconciliation``, so it takes the ledger's own exactly-once path: made with the event's
  entries, re-emitted with them on a redelivery, written by the sink in the batch's transaction into
  ``reconciliation_items`` (migration 0011) where a replay writes nothing. A side table written by the worker
  would need its own idempotence and would not share the ledger's commit. Items carry the account id and the
  transaction refs the ledger holds already, the event's amount and a line of detail: no card data.
- **Uncleared authorisations and pending past its window**: derived from the ledger, through ``open_pending``,
  which the ledger's own statement trigger keeps exact in the sink's transaction (per purchase and offer, the
  pending held now and since when). Reading it costs the size of the open authorisations, never the history.
  "Past its window": still pending more than ``CLOCK_GRACE_S`` after the purchase's first pending plus the
  longest ``auth_expiry_days`` of its offers (the engine's own expiry, ``stream.core.lifecycle``): the worker's
  clock should have released it.

The gauges are computed by the API process (``ReconciliationGauges``, every ``RECONCILE_INTERVAL_S``): it holds
the live offer book (their windows) and a pool already, and reads only; the sink's connection and write path stay
its own (the items counter is the sink's, from the rows it inserted). Every API replica reports the same values:
the rules and panels take ``max``. The sink's distance behind the accruals topic is the sink's consumer lag
(``cashback_consumer_lag_messages`` of its group on the accruals topic), shown on the same dashboard row.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

import asyncpg

from stream.core.entries import ITEM_KINDS
from stream.core.offers import OfferBook
from stream.metrics import (
    RECONCILIATION_ITEMS_LAST_DAY,
    RECONCILIATION_LAST_RUN,
    RECONCILIATION_OLDEST_PENDING,
    RECONCILIATION_PAST_WINDOW,
    RECONCILIATION_UNCLEARED,
)
from stream.store import reconciliation as store

log = logging.getLogger(__name__)


def offer_windows(book: OfferBook) -> dict[str, int]:
    """Each offer's auth_expiry_days, by offer id: the windows ``store.pending`` judges against."""
    return {offer.offer_id: offer.auth_expiry_days for offer in book.offers}


class ReconciliationGauges:
    """Sets the reconciliation gauges from the ledger, now and every ``interval_s``."""

    def __init__(self, pool: asyncpg.Pool, windows: Callable[[], Mapping[str, int]], interval_s: float) -> None:
        self.pool = pool
        self.windows = windows  # each live offer's auth_expiry_days
        self.interval_s = interval_s

    async def run(self) -> None:
        """Observe every ``interval_s``, forever; a failed round is logged and tried at the next."""
        while True:
            try:
                await self.observe(datetime.now(UTC))
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning("reconciliation gauges not computed (%s: %s)", type(error).__name__, error)
            await asyncio.sleep(self.interval_s)

    async def observe(self, now: datetime) -> store.PendingFigures:
        """One round, as of ``now``: the gauges set, and the pending figures returned."""
        async with self.pool.acquire() as connection:
            async with connection.transaction(isolation="repeatable_read", readonly=True):  # one snapshot
                recent = await store.items_since(connection, now - timedelta(days=1))
                figures = await store.pending(connection, self.windows(), now)
        for kind in ITEM_KINDS:
            RECONCILIATION_ITEMS_LAST_DAY.labels(kind).set(recent.get(kind, 0))
        for bucket, count in figures.uncleared.items():
            RECONCILIATION_UNCLEARED.labels(bucket).set(count)
        RECONCILIATION_PAST_WINDOW.set(figures.past_window)
        RECONCILIATION_OLDEST_PENDING.set(figures.oldest_s)
        RECONCILIATION_LAST_RUN.set(time.time())
        return figures
