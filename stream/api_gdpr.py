"""The balance API's GDPR routes (``stream.gdpr`` does the work): export everything held about an
account (article 15) and erase it (article 17). Operations only (``cashback:operations``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import asyncpg
from fastapi import APIRouter, Depends, HTTPException

from schemas.codec import Codec
from stream import gdpr
from stream.api_common import ACCOUNT_ID, no_cashback, retryable, secured
from stream.api_models import AccountExport, ErasureRequest, ErasureResult
from stream.auth import OPERATIONS, Principal
from stream.settings import Settings
from topics.catalogue import Catalogue

ERASURE_WAIT_S = 60.0  # how long an erasure request waits for the worker, then for the sink


def gdpr_routes(
    *,
    settings: Settings,
    codec: Codec,
    topics: Catalogue,
    pool: Callable[..., Any],
    operators: Callable[..., Any],
) -> APIRouter:
    """The routes, with the API's own pieces: its settings, codec and topics, its pool and
    operators dependencies."""
    router = APIRouter()

    @router.get(
        "/v1/operations/accounts/{account_id}/export",
        response_model=AccountExport,
        dependencies=[Depends(operators)],
        **secured(OPERATIONS, not_found="Nothing is held about the account (never seen), or it was erased (the detail says so)."),
    )
    async def export_account(account_id: str = ACCOUNT_ID, db: asyncpg.Pool = Depends(pool)) -> AccountExport:
        """For operators (GDPR article 15): everything held about the account, as stream.gdpr
        describes it: balances, every history line with its explanation, refused entries, its
        profile and activations as last published, its erasure status."""
        try:
            return await gdpr.export_account(settings, codec, topics, db, account_id)
        except gdpr.AccountErased:
            raise HTTPException(
                status_code=404, detail=f"account {account_id} was erased: no personal data of it is held"
            ) from None
        except gdpr.NothingHeld:
            raise no_cashback(account_id) from None

    @router.post(
        "/v1/operations/accounts/{account_id}/erasure",
        response_model=ErasureResult,
        **retryable(secured(OPERATIONS)),
    )
    async def erase_account(
        body: ErasureRequest,
        account_id: str = ACCOUNT_ID,
        who: Principal = Depends(operators),
        db: asyncpg.Pool = Depends(pool),
    ) -> ErasureResult:
        """For operators (GDPR article 17): erase the account (stream.gdpr): tombstones in Kafka,
        its state and profile deleted by the worker, its ledger rows moved to a random pseudonym
        with their amounts kept, the erasure logged (the token's subject as the operator). Waits
        for the worker and the sink (up to a minute each); idempotent, so a 503 is retried."""
        try:
            report = await gdpr.erase_account(
                settings, codec, topics, account_id, body.reason, who.subject or "unknown", ERASURE_WAIT_S, db=db
            )
        except gdpr.ErasureIncomplete as incomplete:
            raise HTTPException(status_code=503, detail=str(incomplete), headers={"Retry-After": "30"}) from None
        except ValueError as refused:  # an id that is a pseudonym, a blank reason (a 400, documented for every route)
            raise HTTPException(status_code=400, detail=str(refused)) from None
        logged = report.erasure
        return ErasureResult(
            **{k: v for k, v in asdict(logged).items() if k in ErasureResult.model_fields and k != "erasure_id"},
            erasure_id=str(logged.erasure_id),
            tombstones=report.tombstones,
        )

    return router
