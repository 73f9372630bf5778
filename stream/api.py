"""The balance API for bank apps: balances and the paginated, explained history of an account,
the live offers, and offer activation.

Reads balances and history from Postgres; holds the offers topic in memory (as every worker does)
and publishes activations to their topic, partitioned like the account's card events. OpenAPI at
``/openapi.json`` (interactive at ``/docs``); the answers' models are in ``stream.api_models``.

Every route but ``/healthz``, ``/readyz``, ``/metrics`` and the OpenAPI document needs a bearer
token (``stream.auth`` checks it and says what it may do): no valid token is a 401, a token without the route's scope a
403, and an account the token does not act for the same 404 as an account never seen. The live
offers need a valid token and no scope: they are what bank apps show every customer.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka.errors import KafkaError
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from schemas.codec import Codec
from stream.account_messages import activation_message
from stream.api_common import (
    ACCOUNT_ID,
    BEARER,
    CHARITY_ID,
    CURSOR_PATTERN,
    OFFER_ID,
    BodyLimit,
    database_unavailable,
    declared_query_only,
    decode_cursor,
    encode_cursor,
    no_cashback,
    publish,
    route_of,
    secured,
    shut_down,
    stream_unavailable,
)
from stream.api_gdpr import gdpr_routes
from stream.api_holds import hold_routes
from stream.api_models import (
    Activation,
    Balances,
    Donations,
    Explanation,
    History,
    HistoryLine,
    LedgerConflict,
    LedgerConflicts,
    OfferSummary,
    Problem,
    balance_of,
)
from stream.api_offer_results import offer_results_routes
from stream.api_payouts import PayoutGauges, payout_routes
from stream.api_reconciliation import reconciliation_routes
from stream.api_redemptions import redemption_routes
from stream.api_sponsors import sponsor_routes
from stream.auth import ACCOUNTS_READ, OFFERS_ACTIVATE, OPERATIONS, SCOPES, Authenticator, InvalidToken, Principal
from stream.core.holdout import held_out
from stream.core.offers import Offer
from stream.kafka_clients import start_client
from stream.metrics import API_REQUESTS, observe_gc_pauses
from stream.offer_mirror import OfferMirror
from stream.offer_results import ActivationMirror, OfferResultsGauges
from stream.producing import producer as make_producer
from stream.reconciliation import ReconciliationGauges, offer_windows
from stream.settings import Settings
from stream.store import reads
from stream.store.availability import POSTGRES_UNAVAILABLE
from stream.store.migrations import pending_migrations
from topics.catalogue import Catalogue

log = logging.getLogger(__name__)


def create_app(settings: Settings, codec: Codec, topics: Catalogue, authenticator: Authenticator | None = None) -> FastAPI:
    """The API over ``settings``' servers, with the process's codec and topic catalogue (built
    once, by ``stream.composition.System``), checking tokens with ``authenticator`` (default: the
    one the settings describe, its keys loaded now; ConfigError naming the variable if it cannot be)."""
    auth = authenticator or Authenticator.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=10)
        app.state.offers = OfferMirror(
            topics.offers.name, codec, settings.kafka_bootstrap_servers, **settings.kafka_client_options()
        )
        mirror = asyncio.create_task(app.state.offers.run())
        gauges = ReconciliationGauges(app.state.pool, lambda: offer_windows(app.state.offers.book), settings.reconcile_interval_s)
        reconciling = asyncio.create_task(gauges.run()) if settings.reconcile_interval_s else None
        app.state.activations = ActivationMirror(
            topics.activations.name, codec, settings.kafka_bootstrap_servers, **settings.kafka_client_options()
        )
        following = asyncio.create_task(app.state.activations.run())
        results = OfferResultsGauges(
            app.state.pool,
            lambda: app.state.offers.book,
            app.state.activations,
            settings.offer_results_interval_s,
            offers_ready=app.state.offers.ready,
        )
        reporting = asyncio.create_task(results.run()) if settings.offer_results_interval_s else None
        payout_gauges = PayoutGauges(app.state.pool, settings.payout_gauges_interval_s)
        paying = asyncio.create_task(payout_gauges.run()) if settings.payout_gauges_interval_s else None
        app.state.producer = make_producer(settings)
        await start_client(app.state.producer)
        log.info(
            "bearer tokens of %s for %s, signed by keys of %s: %s",
            auth.issuer,
            auth.audience,
            auth.keys.source,
            auth.keys.describe(),
        )
        try:
            yield
        finally:
            tasks = [t for t in (mirror, reconciling, following, reporting, paying) if t is not None]
            await shut_down(tasks, app.state.producer, app.state.pool)

    app = FastAPI(
        title="Cashback balance API",
        version="1",
        description="Balances and explained history of card-linked cashback, for bank apps.",
        lifespan=lifespan,
        dependencies=[Depends(declared_query_only)],
    )
    for unavailable in POSTGRES_UNAVAILABLE:  # a 503 to retry, not a 500, while Postgres is away
        app.add_exception_handler(unavailable, database_unavailable)
    app.add_exception_handler(KafkaError, stream_unavailable)  # the same while the broker is away
    app.add_middleware(BodyLimit)  # before the token is checked: FastAPI reads the body first

    @app.middleware("http")
    async def count_requests(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        API_REQUESTS.labels(route_of(request), str(response.status_code)).inc()
        return response

    generate_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate_openapi()
        schema.setdefault("components", {}).setdefault("securitySchemes", {})[BEARER] = {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "An OAuth2 access token (JWT) from the bank's identity provider. Its `scope` claim (space "
            "separated) grants: " + "; ".join(f"`{name}` {text}" for name, text in SCOPES.items()) + ". Any valid token "
            "reads the live offers.",
        }
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

    def pool(request: Request) -> asyncpg.Pool:
        return request.app.state.pool

    async def principal(request: Request) -> Principal:
        """The caller the request's bearer token names; 401 without a valid one. The token is never logged."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            raise HTTPException(401, "missing bearer token (Authorization: Bearer <token>)", {"WWW-Authenticate": "Bearer"})
        try:
            return await auth.authenticate(token.strip())
        except InvalidToken as refused:
            log.debug("bearer token refused: %s", refused)
            challenge = f'Bearer error="invalid_token", error_description="{refused}"'
            raise HTTPException(401, str(refused), {"WWW-Authenticate": challenge}) from None

    def scoped(*alternatives: str) -> Any:
        """A dependency: the caller, if its token has one of ``alternatives``' scopes (else 403)."""

        async def check(who: Principal = Depends(principal)) -> Principal:
            if not who.has_any(alternatives):
                challenge = f'Bearer error="insufficient_scope", scope="{" ".join(alternatives)}"'
                detail = f"the token has none of the scopes {', '.join(alternatives)}"
                raise HTTPException(403, detail, {"WWW-Authenticate": challenge})
            return who

        return check

    readers, operators, activators = scoped(ACCOUNTS_READ, OPERATIONS), scoped(OPERATIONS), scoped(OFFERS_ACTIVATE)

    async def readable_account(account_id: str = ACCOUNT_ID, who: Principal = Depends(readers)) -> str:
        """The path's account, if the token may read it; else the 404 of an account never seen."""
        if not who.may_read(account_id):
            raise no_cashback(account_id)
        return account_id

    async def activatable_account(account_id: str = ACCOUNT_ID, who: Principal = Depends(activators)) -> str:
        """The path's account, if the token acts for it; else the 404 of an account never seen."""
        if not who.may_activate_for(account_id):
            raise no_cashback(account_id)
        return account_id

    unknown_account = "An account the system has never seen (no ledger entry, no purchase), or one the token does not act for."

    @app.get(
        "/v1/accounts/{account_id}/balances",
        response_model=Balances,
        **secured(ACCOUNTS_READ, OPERATIONS, not_found=unknown_account),
    )
    async def get_balances(account_id: str = Depends(readable_account), db: asyncpg.Pool = Depends(pool)) -> Balances:
        """The account's balances per reward kind and unit. An account the system has seen whose
        purchases earned nothing (its history has only NOT_EARNED lines) has no line: 200 with an
        empty list, every balance zero. An account never seen is a 404, as for its history."""
        rows = await reads.balances(db, account_id)
        if not rows and not await reads.account_seen(db, account_id):
            raise no_cashback(account_id)
        return Balances(
            account_id=account_id,
            balances=[balance_of(r) for r in rows],
        )

    @app.get(
        "/v1/accounts/{account_id}/history",
        response_model=History,
        **secured(ACCOUNTS_READ, OPERATIONS, not_found=unknown_account, paged=True),
    )
    async def get_history(
        account_id: str = Depends(readable_account),
        limit: int = Query(50, ge=1, le=500, description="Lines per page, newest first."),
        cursor: str | None = Query(None, max_length=64, pattern=CURSOR_PATTERN, description="next_cursor of the previous page."),
        db: asyncpg.Pool = Depends(pool),
    ) -> History:
        before = decode_cursor(cursor) if cursor else None
        rows = await reads.history(db, account_id, before, limit + 1)
        if not rows and before is None:
            raise no_cashback(account_id)
        page = rows[:limit]
        return History(
            account_id=account_id,
            entries=[
                HistoryLine(
                    **{k: r[k] for k in HistoryLine.model_fields if k != "explanation"},
                    explanation=Explanation(**json.loads(r["explanation"])),
                )
                for r in page
            ],
            next_cursor=encode_cursor(page[-1]["history_seq"]) if len(rows) > limit else None,
        )

    @app.get(
        "/v1/charities/{charity_id}/donations",
        response_model=list[Donations],
        dependencies=[Depends(operators)],
        **secured(OPERATIONS, not_found="No charity reward ever named this charity."),
    )
    async def get_donations(charity_id: str = CHARITY_ID, db: asyncpg.Pool = Depends(pool)) -> list[Donations]:
        """What customers' charity rewards gave a charity and have promised it, per currency, each
        amount counted once (a reward is promised, then donated, never both). An aggregate over every
        customer: for operations (scope cashback:operations)."""
        rows = await reads.donations(db, charity_id)
        if not rows:
            raise HTTPException(status_code=404, detail=f"nothing donated to charity {charity_id}")
        return [Donations(**dict(row)) for row in rows]

    @app.get(
        "/v1/operations/ledger-conflicts",
        response_model=LedgerConflicts,
        dependencies=[Depends(operators)],
        **secured(OPERATIONS, paged=True),
    )
    async def get_ledger_conflicts(
        limit: int = Query(50, ge=1, le=500, description="Conflicts per page, newest first."),
        cursor: str | None = Query(None, max_length=64, pattern=CURSOR_PATTERN, description="next_cursor of the previous page."),
        db: asyncpg.Pool = Depends(pool),
    ) -> LedgerConflicts:
        """For operators: entries that arrived with an id the account's ledger holds with other
        content. Never written; each was dead-lettered by the sink (reason ledger_conflict)."""
        before = decode_cursor(cursor) if cursor else None
        rows = await reads.ledger_conflicts(db, before, limit + 1)
        page = rows[:limit]
        return LedgerConflicts(
            conflicts=[LedgerConflict(**dict(r)) for r in page],
            next_cursor=encode_cursor(page[-1]["conflict_seq"]) if len(rows) > limit else None,
        )

    # Held rewards and their review, merchants flagged: the abuse controls (stream.api_holds).
    app.include_router(
        hold_routes(
            pool=pool,
            operators=operators,
            codec=codec,
            topic=topics.instructions,
            secured=secured,
            cursor=(encode_cursor, decode_cursor),
            cursor_pattern=CURSOR_PATTERN,
        )
    )

    # Points and store credit redeemed with an idempotency key: stream.api_redemptions.
    wait_s = settings.api_redemption_wait_s
    app.include_router(redemption_routes(pool, principal, codec, topics.instructions, secured=secured, wait_s=wait_s))

    # The items behind the reconciliation gauges: stream.api_reconciliation.
    app.include_router(reconciliation_routes(pool=pool, operators=operators))

    # What each offer did for its treated and holdout groups: stream.api_offer_results.
    app.include_router(offer_results_routes(pool=pool, operators=operators))

    # Who pays: a sponsor's monthly statement and the entries behind it: stream.api_sponsors.
    app.include_router(sponsor_routes(pool=pool, operators=operators))
    app.include_router(payout_routes(pool=pool, operators=operators))  # payouts and remittances: stream.api_payouts

    # Everything held about an account, and its erasure (GDPR): stream.api_gdpr.
    app.include_router(
        gdpr_routes(
            settings=settings,
            codec=codec,
            topics=topics,
            pool=pool,
            operators=operators,
        )
    )

    def live_offer(request: Request, offer_id: str) -> Offer:
        offer = request.app.state.offers.book.get(offer_id)
        if offer is None:
            raise HTTPException(status_code=404, detail=f"offer {offer_id} does not exist")
        return offer

    @app.get("/v1/offers", response_model=list[OfferSummary], dependencies=[Depends(principal)], **secured())
    async def get_offers(request: Request) -> list[OfferSummary]:
        """The live offers, as every worker holds them: for any valid token, whatever its scopes."""
        return [OfferSummary.of(offer) for offer in request.app.state.offers.book.offers]

    no_offer = "No such offer, or an account the token does not act for."

    @app.put(
        "/v1/accounts/{account_id}/offers/{offer_id}/activation",
        response_model=Activation,
        status_code=200,
        **secured(OFFERS_ACTIVATE, not_found=no_offer),
    )
    async def activate(request: Request, account_id: str = Depends(activatable_account), offer_id: str = OFFER_ID) -> Activation:
        """Activate an offer for the account: purchases from now on count (idempotent), unless the
        account is in the offer's holdout group (``held_out``)."""
        return await set_activation(request, account_id, live_offer(request, offer_id), True)

    @app.delete(
        "/v1/accounts/{account_id}/offers/{offer_id}/activation",
        response_model=Activation,
        **secured(OFFERS_ACTIVATE, not_found=no_offer),
    )
    async def deactivate(
        request: Request, account_id: str = Depends(activatable_account), offer_id: str = OFFER_ID
    ) -> Activation:
        """Deactivate an offer for the account: later purchases no longer count."""
        return await set_activation(request, account_id, live_offer(request, offer_id), False)

    async def set_activation(request: Request, account_id: str, offer: Offer, active: bool) -> Activation:
        at = datetime.now(UTC)
        offer_id = offer.offer_id
        partition, key, value = activation_message(codec, account_id, offer_id, active, at, topics.activations.partitions)
        await publish(request, topics.activations.name, value, key, partition)
        out = held_out(account_id, offer)
        return Activation(account_id=account_id, offer_id=offer_id, active=active, changed_at=at, held_out=out)

    @app.get("/healthz", response_model=dict)
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": Problem}})
    async def readyz(request: Request, db: asyncpg.Pool = Depends(pool)) -> JSONResponse:
        """Postgres answers and every migration is applied."""
        try:
            async with db.acquire(timeout=2) as connection:
                missing = await pending_migrations(connection)
        except (OSError, asyncpg.PostgresError, TimeoutError) as error:
            return JSONResponse({"detail": f"database unavailable: {type(error).__name__}"}, status_code=503)
        if missing:
            return JSONResponse({"detail": f"migrations not applied: {', '.join(missing)}"}, status_code=503)
        if not request.app.state.offers.ready.is_set():
            return JSONResponse({"detail": "offers not loaded yet"}, status_code=503)
        return JSONResponse({"status": "ready"})

    observe_gc_pauses()  # cashback_gc_pause_seconds, as the worker and the sink report it

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest().decode(), media_type=CONTENT_TYPE_LATEST)

    return app
