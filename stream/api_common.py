"""What the balance API's route modules share (``stream.api``, ``stream.api_holds``,
``stream.api_gdpr``): the path parameters' rules, each protected route's OpenAPI (its security
requirement and error answers), the unknown-account answer, the cursors, the refusal of query
parameters a route does not take, the answer of a request that met Postgres or the broker
unreachable; and the bounded shutdown of what the API's lifespan started.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from collections.abc import Awaitable, Iterable
from typing import Any

import asyncpg
from aiokafka.errors import KafkaError
from fastapi import HTTPException, Path, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from stream.api_models import Problem
from stream.stopping import STEP_S, within

CHARITY_ID = Path(..., min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$", description="A charity id.")
OFFER_ID = Path(..., min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$", description="An offer id.")
ACCOUNT_ID = Path(..., min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$", description="The bank's account id.")

BEARER = "bearerAuth"  # the OpenAPI security scheme
SHUTDOWN_STEP_S = STEP_S  # each step of the API's shutdown; past it, what is left is abandoned, and said

log = logging.getLogger(__name__)


async def shut_down(tasks: Iterable[asyncio.Task[Any]], producer: Any, pool: asyncpg.Pool) -> None:
    """Cancel the lifespan's tasks, then stop its producer, then close its pool, each step bounded
    by ``SHUTDOWN_STEP_S``: a stop on SIGTERM must not wait for the orchestrator's kill. A pool
    whose connection was never given back (a task cancelled mid-query: asyncpg #547, #431) is
    terminated by ``close()`` itself once cancelled, as asyncpg documents."""
    running = list(tasks)
    for task in running:
        task.cancel()
    await _within("its background tasks", asyncio.gather(*running, return_exceptions=True))
    await _within("its Kafka producer", producer.stop())
    await _within("its Postgres pool", pool.close())


async def _within(what: str, step: Awaitable[Any]) -> None:
    """``step`` given ``SHUTDOWN_STEP_S`` (``stream.stopping.within``, which logs what it raised)."""
    await within(what, step, SHUTDOWN_STEP_S)


DATABASE_RETRY_AFTER_S = 5  # what a 503 of a Postgres outage tells the bank app to wait
PUBLISH_TIMEOUT_S = 10.0  # a route's message to the broker, acknowledged within this or a 503
BROKER_RETRY_AFTER_S = 5


def route_of(request: Request) -> str:
    """The request's route as declared (``/v1/accounts/{account_id}/balances``), for a log line: its
    path would name the account, personal data that no log keeps (and an id can be anything its
    pattern allows, a card number's digits too)."""
    return getattr(request.scope.get("route"), "path", "unmatched")


async def publish(request: Request, topic: str, value: bytes, key: bytes | None, partition: int) -> None:
    """Send a route's message and wait for the broker's acknowledgement, within ``PUBLISH_TIMEOUT_S``:
    past it, or on a Kafka error, a 503 the bank app retries (the routes that publish are idempotent:
    an activation sets a state, a redemption has its key, a hold decision applies once). The request
    waited for ever while the broker was away. The message may still be delivered once the broker
    is back: the answer says so."""
    sending = request.app.state.producer.send_and_wait(topic, value, key=key, partition=partition)
    try:
        await asyncio.wait_for(sending, PUBLISH_TIMEOUT_S)
    except (TimeoutError, KafkaError) as error:
        log.warning("%s %s: the broker did not take the message (%s)", request.method, route_of(request), type(error).__name__)
        detail = f"the event stream did not acknowledge the request within {PUBLISH_TIMEOUT_S:.0f} s ({type(error).__name__}); "
        raise HTTPException(
            status_code=503,
            detail=detail + "it may still be applied once the stream is back: send it again, it is idempotent",
            headers={"Retry-After": str(BROKER_RETRY_AFTER_S)},
        ) from None


async def database_unavailable(request: Request, error: Exception) -> JSONResponse:
    """A request that met Postgres unreachable (``stream.store.availability.POSTGRES_UNAVAILABLE``):
    a 503 the bank app retries after ``Retry-After``, and one line in the log, instead of a 500 and
    a traceback per request for as long as the outage lasts."""
    log.warning("%s %s: the database is unavailable (%s)", request.method, route_of(request), type(error).__name__)
    return JSONResponse(
        {"detail": f"the ledger's database is unavailable ({type(error).__name__}): try again"},
        status_code=503,
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
    )


async def stream_unavailable(request: Request, error: Exception) -> JSONResponse:
    """A request that met the broker unreachable or refusing outside ``publish`` (an export reading the
    account's topics, an erasure publishing its tombstones, a client that cannot bootstrap): a 503
    the bank app retries after ``Retry-After``, and one line in the log, not a 500 and a traceback."""
    log.warning("%s %s: the event stream is unavailable (%s)", request.method, route_of(request), type(error).__name__)
    return JSONResponse(
        {"detail": f"the event stream did not answer ({type(error).__name__}): try again"},
        status_code=503,
        headers={"Retry-After": str(BROKER_RETRY_AFTER_S)},
    )


def no_cashback(account_id: str) -> HTTPException:
    """The 404 of an account never seen, and of an account the token does not act for: the same."""
    return HTTPException(status_code=404, detail=f"account {account_id} has no cashback")


def secured(*alternatives: str, not_found: str | None = None, paged: bool = False) -> dict[str, Any]:
    """A protected route's OpenAPI: its security requirement (any one of ``alternatives``' scopes; none:
    any valid token) and its 400, 401, 403, 404, 413 and 503 answers."""
    bad_request = "A query parameter the route does not take" + (", or a cursor this API did not return." if paged else ".")
    responses: dict[int | str, dict[str, Any]] = {
        400: {"model": Problem, "description": bad_request},
        401: {
            "model": Problem,
            "description": "No valid bearer token: missing, malformed, expired, signed by an "
            "unknown key, or for another issuer or audience (see WWW-Authenticate).",
        },
    }
    if alternatives:
        responses[403] = {"model": Problem, "description": f"The token has none of the scopes {', '.join(alternatives)}."}
    if not_found:
        responses[404] = {"model": Problem, "description": not_found}
    responses[413] = {"model": Problem, "description": f"A request body over {MAX_BODY_BYTES} bytes: it is not read."}
    responses[503] = {
        "model": Problem,
        "description": "The ledger's database or the event stream did not answer (an outage): try again (Retry-After).",
    }
    security = [{BEARER: [scope]} for scope in alternatives] or [{BEARER: []}]
    return {"responses": responses, "openapi_extra": {"security": security}}


def retryable(route: dict[str, Any]) -> dict[str, Any]:
    """A protected route's OpenAPI (``secured``) with the 503 of a wait that ran out."""
    description = "The worker or the sink did not follow in time: nothing was lost, send it again."
    return {**route, "responses": {**route["responses"], 503: {"model": Problem, "description": description}}}


# A cursor is the URL-safe base64 of a positive sequence number: anything else is refused before it
# is read (422), and one of that form this API never issued is a 400.
CURSOR_PATTERN = r"^[A-Za-z0-9_-]{1,62}={0,2}$"


def encode_cursor(entry_seq: int) -> str:
    return base64.urlsafe_b64encode(str(entry_seq).encode()).decode()


def decode_cursor(cursor: str) -> int:
    try:
        value = int(base64.urlsafe_b64decode(cursor.encode()).decode())
    except ValueError:
        value = 0
    if not 0 < value < 2**63:  # sequences are positive bigints
        raise HTTPException(status_code=400, detail="cursor is not one this API returned")
    return value


def query_names(dependant: Any) -> set[str]:
    """The query parameters a route (or a dependency of it) declares."""
    names = {param.alias for param in dependant.query_params}
    for dependency in dependant.dependencies:
        names |= query_names(dependency)
    return names


MAX_BODY_BYTES = 64 * 1024  # the largest request body read; the API's bodies hold a few hundred bytes


class BodyLimit:
    """ASGI middleware: a request body over ``MAX_BODY_BYTES`` is answered 413 and never read whole.
    FastAPI reads a route's body before it checks the bearer token, and neither it nor uvicorn bounds
    the body: a caller without a token made the API hold whatever it sent (a 300 MB body grew it by
    500 MiB). A declared ``Content-Length`` over the bound is refused before anything is read; a
    body sent without one (chunked) is refused as soon as what arrived passes it."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await JSONResponse({"detail": self._detail()}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def bounded() -> dict[str, Any]:
            nonlocal received
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:  # FastAPI passes an HTTPException from the body's read on as it is
                    raise HTTPException(status_code=413, detail=self._detail())
            return message

        await self.app(scope, bounded, send)

    def _detail(self) -> str:
        return f"the request body is larger than {self.limit} bytes"


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


async def declared_query_only(request: Request) -> None:
    """A /v1 route refuses a query parameter it does not take (400), rather than ignore it: a misspelt
    ``limt`` is the caller's error, said at once. And a value holding a control character (a NUL
    Postgres cannot store in text, a line break meant for a log) is refused before any route reads it."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not route.path.startswith("/v1/"):
        return
    unknown = sorted(set(request.query_params) - query_names(route.dependant))
    if unknown:
        raise HTTPException(400, f"unknown query parameter: {', '.join(repr(name) for name in unknown)}"[:300])
    controlled = sorted({name for name, value in request.query_params.multi_items() if _CONTROL.search(value)})
    if controlled:
        raise HTTPException(400, f"control character in query parameter: {', '.join(controlled)}")
