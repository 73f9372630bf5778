"""The balance API's redemption routes (``stream.core.redemptions``), scope ``cashback:redemptions.write``
for the accounts in the token's ``accounts`` claim (a token that reads balances does not spend them):

- ``POST /v1/accounts/{account_id}/redemptions`` with an ``Idempotency-Key`` header (1 to 128 letters,
  digits or ``._:-``) and a body (``reward_kind`` POINTS or STORE_CREDIT, ``unit``, ``amount_minor``, an
  optional short ``reference``). The API does not decide: it sends a REDEEM instruction on the
  instructions topic (the redemption id ``r:<account>:<key>`` its event id), the worker owning the account
  decides it in the account's order against its wallet, and the sink writes the decision. The API then
  waits up to ``API_REDEMPTION_WAIT_S`` for it to reach the ledger: 201 with the redemption when redeemed,
  409 with the reason when refused (``insufficient_balance``, ``wallet_unknown``), else 202 with a
  ``Location`` to ask again. A request whose key the ledger already holds is answered from the ledger and
  sends nothing (201 or 409 as the first); with another body it is a 409 ``idempotency_key_reused``
  (nothing redeemed). The same key sent again while the first is in flight is the same event for the
  worker (decided once; another body is dead-lettered as a duplicate conflict): the answer, once in the
  ledger, is compared with the request, so the second learns the mismatch then.
- ``GET /v1/accounts/{account_id}/redemptions/{idempotency_key}``: the redemption as the ledger holds it
  (REDEEMED or REFUSED), or 404 (never asked, or not decided yet). Also for the account's readers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
from fastapi import APIRouter, Depends, Header, HTTPException, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.codec import Codec
from stream import instructions
from stream.api_common import ACCOUNT_ID, no_cashback, publish
from stream.api_models import Balance, Problem, balance_of
from stream.auth import ACCOUNTS_READ, OPERATIONS, REDEMPTIONS_WRITE, Principal
from stream.core.events import validate
from stream.core.money import format_minor
from stream.core.redemption_messages import (
    IDEMPOTENCY_KEY,
    MAX_AMOUNT_MINOR,
    REFERENCE,
    asked_of,
    redeem_instruction,
    redemption_id,
    unit_ok,
)
from stream.store import redemptions as store
from topics.catalogue import Topic

KEY_PATTERN = f"^{IDEMPOTENCY_KEY.pattern}$"
POLL_S = 0.05  # how often the ledger is asked while the API waits


class RedemptionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reward_kind: str = Field(description="POINTS or STORE_CREDIT (cash is paid out, a charity reward given away).")
    unit: str = Field(pattern=r"^[A-Z]{3}$", description="PTS for points; the store credit's ISO 4217 currency.")
    amount_minor: int = Field(gt=0, le=MAX_AMOUNT_MINOR, description="How much, in minor units (whole points for PTS).")
    reference: str | None = Field(
        None,
        pattern=f"^{REFERENCE.pattern}$",
        description="What it is for, e.g. a catalogue item or an order (1 to 64 letters, digits, spaces or ._:/#-, "
        "starting with a letter or digit). Never personal data: it is on the ledger entry.",
    )

    @field_validator("reward_kind")
    @classmethod
    def _redeemable(cls, value: str) -> str:
        if value not in ("POINTS", "STORE_CREDIT"):
            raise ValueError("only POINTS and STORE_CREDIT are redeemed (cash is paid out, a charity reward given away)")
        return value

    @model_validator(mode="after")
    def _unit(self) -> RedemptionRequest:
        if not unit_ok(self.reward_kind, self.unit):
            raise ValueError("points are redeemed in PTS, store credit in its ISO 4217 currency")
        return self


class Redemption(BaseModel):
    redemption_id: str = Field(description="r:<account_id>:<idempotency key>: the same key is the same redemption.")
    idempotency_key: str
    account_id: str
    status: Literal["REDEEMED", "REFUSED", "PENDING"] = Field(
        description="REDEEMED: moved from available to redeemed; REFUSED: nothing moved (see reason); PENDING: sent, "
        "not yet in the ledger (ask GET .../redemptions/{idempotency_key})."
    )
    reward_kind: str
    unit: str
    amount_minor: int
    amount: str = Field(description="amount_minor formatted, e.g. '500 PTS'.")
    reference: str | None
    reason: str | None = Field(description="redeemed, insufficient_balance or wallet_unknown; null while PENDING.")
    detail: str | None = Field(description="The ledger line's explanation: what was redeemed and from which rewards.")
    available_change_minor: int = Field(description="What it did to available_minor: -amount_minor when REDEEMED, else 0.")
    balance: Balance | None = Field(description="The account's balance of that kind and unit now (null: none).")
    occurred_at: datetime | None = None
    recorded_at: datetime | None = None


class RedemptionProblem(BaseModel):
    detail: str
    reason: str = Field(description="insufficient_balance, wallet_unknown or idempotency_key_reused.")
    redemption: Redemption | None = Field(None, description="The redemption the key names, as the ledger holds it.")


def redemption_routes(
    pool: Callable[..., Any],
    principal: Callable[..., Any],
    codec: Codec,
    topic: Topic,
    *,
    secured: Callable[..., dict[str, Any]],
    wait_s: float,
) -> APIRouter:
    """The routes, with the API's pool and caller dependencies, its codec, the instructions topic, its OpenAPI
    security helper and how long a POST waits for the ledger."""
    router = APIRouter()

    def may(*needed: str, reads: bool) -> Callable[..., Any]:
        """A dependency: the caller, if its token has one of ``needed``'s scopes (else 403) and acts for the path's
        account: redeems for it, or (``reads``) reads it (else the 404 of an account never seen)."""

        async def check(account_id: str = ACCOUNT_ID, who: Principal = Depends(principal)) -> Principal:
            if not who.has_any(needed):
                challenge = f'Bearer error="insufficient_scope", scope="{" ".join(needed)}"'
                raise HTTPException(403, f"the token has none of the scopes {', '.join(needed)}", {"WWW-Authenticate": challenge})
            if not (who.may_redeem_for(account_id) or (reads and who.may_read(account_id))):
                raise no_cashback(account_id)
            return who

        return check

    redeemer = may(REDEMPTIONS_WRITE, reads=False)
    reader = may(REDEMPTIONS_WRITE, ACCOUNTS_READ, OPERATIONS, reads=True)
    not_found = "An account the token does not act for."

    async def held(db: asyncpg.Pool, account_id: str, key: str) -> Redemption | None:
        row = await store.redemption(db, account_id, redemption_id(account_id, key))
        if row is None:
            return None
        asked = asked_of(row["detail"]) or ("", row["amount_minor"], row["unit"], "")
        kind, amount, unit, reference = asked
        line = await store.balance(db, account_id, kind, unit)
        return Redemption(
            redemption_id=redemption_id(account_id, key),
            idempotency_key=key,
            account_id=account_id,
            status=row["status"],
            reward_kind=kind,
            unit=unit,
            amount_minor=amount,
            amount=format_minor(amount, unit),
            reference=reference or None,
            reason=row["reason"],
            detail=row["detail"],
            available_change_minor=-amount if row["status"] == "REDEEMED" else 0,
            balance=None if line is None else balance_of(line),
            occurred_at=row["occurred_at"],
            recorded_at=row["recorded_at"],
        )

    def answer(found: Redemption, body: RedemptionRequest, response: Response) -> Redemption | JSONResponse:
        if (found.reward_kind, found.amount_minor, found.unit, found.reference) != (
            body.reward_kind,
            body.amount_minor,
            body.unit,
            body.reference,
        ):
            problem = RedemptionProblem(
                detail="idempotency key reused with a different request", reason="idempotency_key_reused", redemption=found
            )
            return JSONResponse(problem.model_dump(mode="json"), status_code=409)
        if found.status == "REFUSED":
            problem = RedemptionProblem(detail=found.detail or "redemption refused", reason=found.reason or "", redemption=found)
            return JSONResponse(problem.model_dump(mode="json"), status_code=409)
        response.status_code = 201
        return found

    post_route = secured(REDEMPTIONS_WRITE, not_found=not_found)
    post_route["responses"] = {
        **post_route["responses"],
        201: {"model": Redemption, "description": "Redeemed (now, or by the first request with this key)."},
        202: {
            "model": Redemption,
            "description": "Sent, not yet in the ledger: ask the Location (GET .../redemptions/{idempotency_key}).",
        },
        400: {
            "model": Problem,
            "description": "A query parameter the route does not take, or a reference the worker would refuse.",
        },
        409: {
            "model": RedemptionProblem,
            "description": "Refused: above the available balance (insufficient_balance) or a balance not known yet "
            "(wallet_unknown); or the key was used before with a different request (idempotency_key_reused).",
        },
    }

    @router.post("/v1/accounts/{account_id}/redemptions", response_model=Redemption, status_code=202, **post_route)
    async def redeem(
        request: Request,
        response: Response,
        body: RedemptionRequest,
        account_id: str = ACCOUNT_ID,
        idempotency_key: str = Header(
            ...,
            alias="Idempotency-Key",
            min_length=1,
            max_length=128,
            pattern=KEY_PATTERN,
            description="The client's key of this redemption: a retry with the same key is the same redemption.",
        ),
        who: Principal = Depends(redeemer),
    ) -> Any:
        """Redeem points or store credit of the account. The worker decides it against the account's
        available balance, in the account's order; a retried request with the same key redeems nothing more."""
        db: asyncpg.Pool = request.app.state.pool
        found = await held(db, account_id, idempotency_key)
        if found is not None:  # answered from the ledger: nothing sent
            return answer(found, body, response)
        instruction = redeem_instruction(
            account_id,
            idempotency_key,
            body.reward_kind,
            body.unit,
            body.amount_minor,
            body.reference or "",
            who.subject or "unknown client",
            datetime.now(UTC),
        )
        refused = validate(instruction)  # what the worker would dead-letter is refused here, with why
        if refused is not None:
            raise HTTPException(400, f"the redemption would be refused: {refused.detail()}")
        name, key, value, partition = instructions.message(codec, topic, instruction)
        await publish(request, name, value, key, partition)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
            found = await held(db, account_id, idempotency_key)
            if found is not None:
                return answer(found, body, response)
        response.headers["Location"] = f"/v1/accounts/{account_id}/redemptions/{idempotency_key}"
        return Redemption(
            redemption_id=instruction["event_id"],
            idempotency_key=idempotency_key,
            account_id=account_id,
            status="PENDING",
            reward_kind=body.reward_kind,
            unit=body.unit,
            amount_minor=body.amount_minor,
            amount=format_minor(body.amount_minor, body.unit),
            reference=body.reference,
            reason=None,
            detail=None,
            available_change_minor=0,
            balance=None,
        )

    get_route = secured(
        REDEMPTIONS_WRITE,
        ACCOUNTS_READ,
        OPERATIONS,
        not_found="No redemption with that key in the ledger "
        "(never asked, or not decided yet), or an account the token does not act for.",
    )

    @router.get("/v1/accounts/{account_id}/redemptions/{idempotency_key}", response_model=Redemption, **get_route)
    async def get_redemption(
        request: Request,
        account_id: str = ACCOUNT_ID,
        idempotency_key: str = Path(..., min_length=1, max_length=128, pattern=KEY_PATTERN, description="The redemption's key."),
        who: Principal = Depends(reader),
    ) -> Redemption:
        """The redemption of that key as the ledger holds it: REDEEMED or REFUSED."""
        found = await held(request.app.state.pool, account_id, idempotency_key)
        if found is None:
            raise HTTPException(404, f"no redemption {idempotency_key} of account {account_id} in the ledger")
        return found

    return router
