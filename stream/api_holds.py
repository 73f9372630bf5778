"""The balance API's operations routes of the abuse controls (``stream.core.holds``), scope
``cashback:operations`` only:

- ``GET /v1/operations/holds``: the rewards held for review now, the latest first, paginated (one
  account's with ``?account_id=``), each with its rule and figures;
- ``POST /v1/operations/holds/release`` and ``/forfeit``: a decision on what one purchase holds (one
  offer's share if named), with a reason. The API does not write the ledger: it sends an instruction
  (``stream.instructions``) that the worker owning the account decides in the account's order, like
  a card event, and the sink writes the movement (HELD -> AVAILABLE, or HELD -> EXPENSE) with who and
  why in its explanation. So the account's state knows it (a later refund or chargeback of a released
  reward claws it back from AVAILABLE, of a forfeited one takes nothing more) and never disagrees with
  the ledger. 202 when sent. Idempotent: when the purchase holds nothing any more and its last review
  was the same decision, 200 and nothing is sent; the other decision, or nothing held because a
  refund took it back, is a 409; a purchase never held is a 404. Two decisions sent before the first
  reached the ledger are both decided by the worker, in order: the first moves the reward, the
  second finds nothing held and changes nothing (``no_change``);
- ``GET /v1/operations/merchant-flags``: the merchants the sink's scan found concentrating rewards
  on few accounts (``stream.abuse_scan``), the latest first.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response

from schemas.codec import Codec
from stream import instructions
from stream.api_common import publish
from stream.api_models import HeldReward, HeldRewards, HeldShare, HoldDecision, HoldReview, MerchantFlag, MerchantFlags, Problem
from stream.auth import OPERATIONS, Principal
from stream.core.events import validate
from stream.core.money import format_minor
from stream.store import holds as store
from topics.catalogue import Topic

_ALREADY = {instructions.RELEASE: "HOLD_RELEASED", instructions.FORFEIT: "HOLD_FORFEITED"}
_DONE = {instructions.RELEASE: "released", instructions.FORFEIT: "forfeited"}


def hold_routes(
    *,
    pool: Callable[..., Any],
    operators: Callable[..., Any],
    codec: Codec,
    topic: Topic,
    secured: Callable[..., dict[str, Any]],
    cursor: tuple[Callable[[int], str], Callable[[str], int]],
    cursor_pattern: str,
) -> APIRouter:
    """The routes, with the API's own pieces: its pool and operators dependencies, its codec, the
    instructions topic, its OpenAPI security helper and its cursor encoding."""
    router = APIRouter()
    encode_cursor, decode_cursor = cursor

    @router.get(
        "/v1/operations/holds", response_model=HeldRewards, dependencies=[Depends(operators)], **secured(OPERATIONS, paged=True)
    )
    async def get_holds(
        account_id: str | None = Query(
            None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$", description="Only this account's."
        ),
        limit: int = Query(50, ge=1, le=500, description="Held rewards per page, the latest held first."),
        cursor: str | None = Query(None, max_length=64, pattern=cursor_pattern, description="next_cursor of the previous page."),
        db: asyncpg.Pool = Depends(pool),
    ) -> HeldRewards:
        """For operations: the rewards an abuse rule holds for review now, with the rule's figures."""
        before = decode_cursor(cursor) if cursor else None
        rows = await store.held_rewards(db, account_id, before, limit + 1)
        page = rows[:limit]
        return HeldRewards(
            holds=[
                HeldReward(
                    **{k: r[k] for k in HeldReward.model_fields if k != "held"}, held=format_minor(r["held_minor"], r["currency"])
                )
                for r in page
            ],
            next_cursor=encode_cursor(page[-1]["hold_seq"]) if len(rows) > limit else None,
        )

    answers: dict[int | str, dict[str, Any]] = {
        200: {"model": HoldReview, "description": "Already decided so: nothing sent."},
        404: {"model": Problem, "description": "No reward of that purchase (or offer) of that account was ever held."},
        409: {"model": Problem, "description": "Nothing is held any more: decided otherwise, or clawed back by a refund."},
        400: {"model": Problem, "description": "A bad query parameter, or a reason that looks like a card number."},
    }

    decision_route = secured(OPERATIONS)
    decision_route["responses"] = {**decision_route["responses"], **answers}

    async def decide(request: Request, response: Response, body: HoldDecision, who: Principal, kind: str) -> HoldReview:
        db: asyncpg.Pool = request.app.state.pool
        shares = await store.holds_of_purchase(db, body.account_id, body.transaction_ref, body.offer_id)
        if not shares:
            share = f" (offer {body.offer_id})" if body.offer_id else ""
            raise HTTPException(404, f"no reward of purchase {body.transaction_ref}{share} of account {body.account_id} was held")
        held = [HeldShare(offer_id=s["offer_id"], currency=s["currency"], held_minor=s["held_minor"]) for s in shares]
        review = HoldReview(
            status="accepted",
            decision=kind.split("_")[0].lower(),
            account_id=body.account_id,
            transaction_ref=body.transaction_ref,
            offer_id=body.offer_id,
            instruction_id=None,
            held=held,
        )
        waiting = [s for s in shares if s["held_minor"] > 0]
        if not waiting:
            if {s["reviewed"] for s in shares} == {_ALREADY[kind]}:
                response.status_code = 200
                return review.model_copy(update={"status": f"already_{_DONE[kind]}"})
            reviewed = sorted({s["reviewed"] or "clawed back" for s in shares})
            raise HTTPException(409, f"nothing is held on purchase {body.transaction_ref} any more ({', '.join(reviewed)})")
        actor = who.subject or "unknown operator"
        instruction = instructions.review(
            kind,
            body.account_id,
            body.transaction_ref,
            body.offer_id,
            waiting[0]["basis_currency"],
            actor,
            body.reason,
            datetime.now(UTC),
        )
        refused = validate(instruction)  # what the worker would dead-letter is refused here, with why
        if refused is not None:
            raise HTTPException(400, f"the instruction would be refused: {refused.detail()}")
        name, key, value, partition = instructions.message(codec, topic, instruction)
        await publish(request, name, value, key, partition)
        return review.model_copy(update={"instruction_id": instruction["event_id"]})

    @router.post("/v1/operations/holds/release", response_model=HoldReview, status_code=202, **decision_route)
    async def release(
        request: Request, response: Response, body: HoldDecision, who: Principal = Depends(operators)
    ) -> HoldReview:
        """For operations: release what the purchase holds (HELD -> AVAILABLE, or DONATED for a charity
        reward); it is never held again. The token's subject and the reason go on the ledger entry."""
        return await decide(request, response, body, who, instructions.RELEASE)

    @router.post("/v1/operations/holds/forfeit", response_model=HoldReview, status_code=202, **decision_route)
    async def forfeit(
        request: Request, response: Response, body: HoldDecision, who: Principal = Depends(operators)
    ) -> HoldReview:
        """For operations: forfeit what the purchase holds (HELD -> EXPENSE, counted as clawed back; its
        cap and campaign budget get it back). The token's subject and the reason go on the ledger entry."""
        return await decide(request, response, body, who, instructions.FORFEIT)

    @router.get(
        "/v1/operations/merchant-flags",
        response_model=MerchantFlags,
        dependencies=[Depends(operators)],
        **secured(OPERATIONS, paged=True),
    )
    async def get_merchant_flags(
        limit: int = Query(50, ge=1, le=500, description="Flags per page, the latest first."),
        cursor: str | None = Query(None, max_length=64, pattern=cursor_pattern, description="next_cursor of the previous page."),
        db: asyncpg.Pool = Depends(pool),
    ) -> MerchantFlags:
        """For operations: the merchants the scan found concentrating rewards on few accounts, with its figures."""
        before = decode_cursor(cursor) if cursor else None
        rows = await store.merchant_flags(db, before, limit + 1)
        page = rows[:limit]
        return MerchantFlags(
            flags=[MerchantFlag(**dict(r)) for r in page],
            next_cursor=encode_cursor(page[-1]["flag_seq"]) if len(rows) > limit else None,
        )

    return router
