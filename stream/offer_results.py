"""Offer results for the bank (issue 12): per offer, its treated and holdout groups' accounts, purchases, spend and
average basket, what it cost, and its activations; served by ``GET /v1/operations/offers/{offer_id}/results``
(``stream.api_offer_results``) and as gauges (``OfferResultsGauges``). The definitions in ledger lines are in
``stream.store.offer_results``.

Why this way:

- **Both groups are measured the same way**: a purchase is counted once, at its judgement, on the amount the offer
  was (or would have been) computed on, whether it settled later or not, so neither group gains from the ledger's
  later lines. Refunds take nothing from spend (gross); they do from cost (net).
- **The holdout group needs the offer on its line**: ``purchases_not_earned.offer_id`` (migration 0013), filled by the
  sink from the accrual record's ``offer_id`` (every accrual version carries it: no schema change) and backfilled
  from the detail of the lines written before.
- **Activations are not in Postgres**: they live on the compacted ``<prefix>offer-activations`` topic, whose last word
  per account and offer is the truth the workers fold. The API already follows a compacted topic whole (the offers);
  ``ActivationMirror`` follows this one the same way and keeps only the activations held now (a deactivation or an
  erasure's tombstone removes one). Compaction keeps no history, so an activation later withdrawn is not counted,
  and "in the period" means the activation held now was dated in it. A copy in Postgres would need a writer of its
  own, its own erasure and export: not worth it for a count. Memory: about 200 bytes per activation held.
- **Gauges** are computed by the API process, like the reconciliation gauges, every
  ``OFFER_RESULTS_INTERVAL_S`` (5 minutes by default): it holds the offer book, which bounds the ``offer_id`` label
  to the live offers (an offer leaving the book leaves the gauges), and the activations. Each round reads every line
  of the live offers in the ledger (no summary table: the sink's write path stays as it is), in one read-only
  snapshot: its cost grows with the ledger, hence an interval of its own, longer than the reconciliation's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import asyncpg

from schemas.codec import Codec
from stream.core.holdout import held_out
from stream.core.offers import Offer, OfferBook
from stream.metrics import (
    OFFER_ACCOUNTS,
    OFFER_ACTIVATIONS,
    OFFER_COST,
    OFFER_ELIGIBLE_ACCOUNTS,
    OFFER_PURCHASES,
    OFFER_RESULTS_LAST_RUN,
    OFFER_SPEND,
)
from stream.offer_mirror import CompactedTopicMirror
from stream.store import offer_results as store
from stream.store.offer_results import GROUPS, HOLDOUT, TREATED

log = logging.getLogger(__name__)

Activation = tuple[str, str, int]  # (account_id, offer_id, activated at, epoch ms)
_ALL = "total"


def _activation(record: dict[str, Any]) -> Activation | None:
    if not record.get("active", True):
        return None
    at = record["changed_at"]
    ms = int(at.timestamp() * 1000) if isinstance(at, datetime) else int(at)
    return (record["account_id"], record["offer_id"], ms)


class ActivationMirror(CompactedTopicMirror[Activation | None]):
    """The activations topic read whole, keeping the activations held now (module doc)."""

    def __init__(self, topic: str, codec: Codec, bootstrap_servers: str, **client_options: object) -> None:
        super().__init__(topic, "offer_activation", codec, _activation, bootstrap_servers, **client_options)

    def _apply(self, key: bytes | None, value: bytes | None) -> bool:
        changed = super()._apply(key, value)
        if key is not None and key in self.values and self.values[key] is None:
            del self.values[key]  # a deactivation: nothing to keep
        return changed

    def counts(
        self, offers: Mapping[str, Offer | None], start: datetime | None = None, end: datetime | None = None
    ) -> dict[str, dict[str, int]]:
        """Per offer of ``offers``: the activations held now, dated in ``[start, end)``: ``total``, and by group
        (``treated``, ``holdout``) where the offer is known (its ``holdout_bps`` says who is held out)."""
        low = start.timestamp() * 1000 if start else float("-inf")
        high = end.timestamp() * 1000 if end else float("inf")
        out = {offer_id: {_ALL: 0} | ({TREATED: 0, HOLDOUT: 0} if offer else {}) for offer_id, offer in offers.items()}
        for value in list(self.values.values()):
            if value is None:
                continue
            account_id, offer_id, ms = value
            if offer_id not in out or not low <= ms < high:
                continue
            counted = out[offer_id]
            counted[_ALL] += 1
            offer = offers[offer_id]
            if offer is not None:
                counted[HOLDOUT if held_out(account_id, offer) else TREATED] += 1
        return out


class OfferResultsGauges:
    """Sets the offer results gauges for every live offer, over its whole life, now and every ``interval_s``."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        book: Callable[[], OfferBook],
        activations: ActivationMirror | None,
        interval_s: float,
        offers_ready: asyncio.Event | None = None,
    ) -> None:
        """``offers_ready``: set once ``book`` holds every offer (the API's offer mirror read its topic)."""
        self.pool = pool
        self.book = book
        self.activations = activations
        self.interval_s = interval_s
        self.offers_ready = offers_ready

    async def run(self) -> None:
        """Observe every ``interval_s``, forever, from the moment the offers are known (a first round on an
        empty book would leave the gauges without series until the next); a failed round is logged and tried
        at the next."""
        if self.offers_ready is not None:
            await self.offers_ready.wait()
        while True:
            try:
                await self.observe()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning("offer results gauges not computed (%s: %s)", type(error).__name__, error)
            await asyncio.sleep(self.interval_s)

    async def observe(self) -> dict[str, store.OfferFigures]:
        """One round: the gauges set for the live offers (and only them), and the figures returned."""
        offers = {offer.offer_id: offer for offer in self.book().offers}
        async with self.pool.acquire() as connection:
            async with connection.transaction(isolation="repeatable_read", readonly=True):  # one snapshot
                found = await store.figures(connection, list(offers), None, None)
        activations = self.activations.counts(offers) if self.activations and self.activations.ready.is_set() else {}
        # No await from here on: a scrape sees the previous round's series or this one's, never a mix.
        for gauge in (OFFER_ACCOUNTS, OFFER_ELIGIBLE_ACCOUNTS, OFFER_PURCHASES, OFFER_SPEND, OFFER_COST, OFFER_ACTIVATIONS):
            gauge.clear()
        for offer_id, figures in found.items():
            OFFER_ELIGIBLE_ACCOUNTS.labels(offer_id).set(figures.eligible_accounts)
            for group in GROUPS:
                OFFER_ACCOUNTS.labels(offer_id, group).set(figures.accounts[group])
                if offer_id in activations:
                    OFFER_ACTIVATIONS.labels(offer_id, group).set(activations[offer_id][group])
            for currency, groups in figures.by_currency.items():
                for group in GROUPS:
                    purchases = groups.get(group, store.Purchases())
                    OFFER_PURCHASES.labels(offer_id, group, currency).set(purchases.purchases)
                    OFFER_SPEND.labels(offer_id, group, currency).set(purchases.spend_minor)
            for cost in figures.costs:
                OFFER_COST.labels(offer_id, cost.unit).inc(cost.cost_minor)  # one unit: one reward kind per offer
        OFFER_RESULTS_LAST_RUN.set(time.time())
        return found
