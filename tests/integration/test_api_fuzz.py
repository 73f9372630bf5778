"""The balance API fuzzed from its own OpenAPI document with schemathesis, against the real app (served by
uvicorn on a loopback port, in this process) on a real Postgres and Kafka.

Every operation of ``/openapi.json`` (read from the app at collection, so a new route is fuzzed
too; ``NOT_FUZZED`` names the exceptions and why) is asked with requests schemathesis makes from it:
valid ones (positive) and ones breaking it (negative: wrong types, patterns, lengths, unknown
parameters, a missing Authorization header), each carrying an operations token or a customer token
whose ``accounts`` name the seeded account ``fz-1``, and half of them with path parameters pinned to
the seeded data (so the 200 answers are exercised, not only the 404s). Every answer is checked with
schemathesis's checks: never a 5xx; every status code, content type, header and body as the document
declares them; bad input refused with a 4xx and good input never refused. The exceptions: a cursor
of the documented form that this API never returned is a 400, which the document declares and which
schemathesis cannot tell from a good cursor, so a positive case with a cursor may get it (and only it);
likewise a period whose ``from`` is not before its ``to`` (offer results), each date valid alone.

At most ``MAX_EXAMPLES`` cases per operation, token and mode: about 500 for the nine operations of
the balance API, 15 s on this machine. Failures print schemathesis's reproduction (a curl line) and
the Hypothesis seed.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import asyncpg
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from schemas.codec import Codec
from stream.api import create_app
from stream.auth import ACCOUNTS_READ, OFFERS_ACTIVATE, OPERATIONS
from stream.core.entries import Entry
from stream.core.lifecycle import due_events
from stream.core.rules import decide
from stream.localstack.process import free_port, spawn, terminate
from stream.offer_admin import publish_offers
from stream.settings import Settings
from stream.sink import staging_row
from stream.store.journal import write_batch
from stream.store.migrations import migrate
from tests.factories import T0, book, card_event, offer
from tests.integration.conftest import api_auth_env, api_ready, api_token, fresh_database, wait_until
from topics.admin import ensure_topics
from topics.catalogue import catalogue

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 15  # per operation, token and generation mode
ACCOUNT, CHARITY, OFFER = "fz-1", "fz-charity", "grocery-5"
PINNED = {"account_id": ACCOUNT, "charity_id": CHARITY, "offer_id": OFFER}
BAD_CURSOR = {"detail": "cursor is not one this API returned"}
ANSWERED: defaultdict[tuple[str, str], set[int]] = defaultdict(set)  # (operation, token): the statuses seen
# Operations not fuzzed here, and why (every other operation of the document is).
NOT_FUZZED = {
    "POST /v1/operations/accounts/{account_id}/erasure": "waits for the worker and the sink, which this module does not "
    "run, up to a minute each (ERASURE_WAIT_S), and erases what it is given: fuzzing it would take minutes",
}


def _operations_of_the_api() -> dict[str, bool]:
    """Every operation of the app's OpenAPI document, and whether it takes a parameter or a body
    (something a negative case can break), read at collection (no server needed: the document is
    the app's, its routes are not called; the authenticator is never asked)."""
    app = create_app(Settings.from_env({}), Codec(), catalogue(), authenticator=cast(Any, object()))
    document = app.openapi()
    return {
        f"{method.upper()} {path}": bool(operation.get("parameters") or operation.get("requestBody"))
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }


OPERATIONS_OF_THE_API = [label for label in _operations_of_the_api() if label not in NOT_FUZZED]
# (operation, generation mode): a negative case only where there is something to break
FUZZED_CASES = [
    (label, mode)
    for label, breakable in _operations_of_the_api().items()
    if label not in NOT_FUZZED
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if breakable or mode is GenerationMode.POSITIVE
]


def _seeded_entries() -> list[Entry]:
    """Account fz-1: twelve purchases authorised and cleared (24 lines: history has pages), one
    declined, and a charity reward whose return window ended (a donation to fz-charity)."""
    offers, state, entries = book(), None, []
    for n in range(12):
        for kind in ("AUTHORIZATION", "CLEARING"):
            decision = decide(card_event(kind, 10_000, account_id=ACCOUNT, transaction_ref=f"fz-{n}"), offers, state)
            state, entries = decision.state, entries + list(decision.entries)
    declined = card_event("AUTHORIZATION", 10_000, account_id=ACCOUNT, transaction_ref="fz-declined", response_code="51")
    entries.extend(decide(declined, offers, state).entries)
    charity = book(offer(offer_id="give-1", reward_kind="CHARITY", charity_id=CHARITY, rate_bps=100, pending_days=10))
    clearing = card_event("CLEARING", 10_000, account_id="fz-2", transaction_ref="fz-gift")
    decision = decide(clearing, charity, None)
    entries.extend(decision.entries)
    for event in due_events(decision.state, "fz-2", int((T0 + timedelta(days=12)).timestamp() * 1000)):
        entries.extend(decide(event, charity, decision.state).entries)
    return entries


@pytest.fixture(scope="module")
def fuzzed_env(postgres_url: str, kafka_bootstrap: str, work_dir: Path) -> dict[str, str]:
    """The API's settings: a fresh database holding the seeded ledger, fresh topics with one live
    offer, tokens signed by the session's key."""
    database = fresh_database(postgres_url)
    codec = Codec()

    async def seed() -> None:
        connection = await asyncpg.connect(database)
        try:
            await migrate(connection)
            rows = []
            for position, entry in enumerate(_seeded_entries()):
                raw = codec.encode("accrual", entry.record())
                rows.append(staging_row(position, codec.decode(raw)[1], raw))
            await write_batch(connection, rows)
        finally:
            await connection.close()

    asyncio.run(seed())
    jwks_dir = work_dir / f"api-fuzz-{uuid.uuid4().hex[:8]}"
    jwks_dir.mkdir()
    env = {
        "DATABASE_URL": database,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "TOPIC_PREFIX": f"fuzz-{uuid.uuid4().hex[:6]}.",
        **api_auth_env(jwks_dir),
    }
    settings = Settings.from_env(env)
    topics = catalogue(settings.topic_prefix, settings.topic_partitions)
    asyncio.run(ensure_topics(kafka_bootstrap, topics))
    asyncio.run(publish_offers(settings, codec, topics.offers.name, [offer()]))
    return env


@pytest.fixture(scope="module")
def api_url(fuzzed_env: dict[str, str], work_dir: Path) -> Iterator[str]:
    """The real API (``stream api``) on a loopback port, in a process of its own, ready (its
    Postgres pool, offers mirror and producer started, the offers read); stopped after the module.
    Not in a thread of this process: its Kafka clients draw on the global ``random`` (node choice),
    and Hypothesis takes any change of that state while it draws a case for a strategy using it
    (``HypothesisDeprecationWarning``, an error here). Not schemathesis's in-process ASGI client
    either: its pytest plugin ends the app's lifespan after every test, and the next test's first
    requests would meet an API still loading its offers."""
    port = free_port()
    log_path = work_dir / f"api-fuzz-{port}.log"
    with open(log_path, "ab") as log:
        process = spawn(
            [sys.executable, "-m", "stream", "api"],
            env={**os.environ, **fuzzed_env, "API_PORT": str(port), "PYTHONUNBUFFERED": "1"},
            cwd=Path(__file__).resolve().parents[2],
            stdout=log,
            stderr=log,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: api_ready(url) or process.poll() is not None, 60, "the fuzzed API to be ready", observe=log_path.read_text
        )
        assert process.poll() is None, log_path.read_text()
        yield url
    finally:
        terminate(process, grace_s=15.0)


@pytest.fixture(scope="module")
def api_schema(api_url: str) -> Any:
    return schemathesis.openapi.from_url(f"{api_url}/openapi.json")


TOKENS = {
    "operations": lambda: api_token([OPERATIONS]),
    "customer": lambda: api_token([ACCOUNTS_READ, OFFERS_ACTIVATE], [ACCOUNT]),
}


def test_the_fuzzed_operations_are_every_operation_of_the_api(api_schema: Any) -> None:
    labels = [result.ok().label for result in api_schema.get_all_operations()]
    assert sorted(set(labels) - set(NOT_FUZZED)) == sorted(OPERATIONS_OF_THE_API)
    assert {"GET /v1/accounts/{account_id}/balances", "PUT /v1/accounts/{account_id}/offers/{offer_id}/activation"} <= set(labels)


@pytest.mark.parametrize(("label", "mode"), FUZZED_CASES, ids=[f"{label}-{mode.value}" for label, mode in FUZZED_CASES])
@pytest.mark.parametrize("who", list(TOKENS))
def test_the_api_answers_as_its_openapi_says(api_schema: Any, label: str, mode: GenerationMode, who: str) -> None:
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, label
    pinned = {name: value for name, value in PINNED.items() if any(p.name == name for p in operation.path_parameters)}
    strategy = operation.as_strategy(generation_mode=mode)
    if pinned and mode is GenerationMode.POSITIVE:
        strategy = st.one_of(strategy, operation.as_strategy(generation_mode=mode, path_parameters=pinned))
    headers = {"Authorization": f"Bearer {TOKENS[who]()}"}

    @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def answers_as_documented(case: Any) -> None:
        with_cursor = bool((case.query or {}).get("cursor"))
        with_period = {"from", "to"} <= set(case.query or {})
        excluded = [positive_data_acceptance] if with_cursor or with_period else []
        if "Authorization" not in (case.headers or {}):
            # A negative case that dropped the token: the test puts it back, so the request is valid
            # and need not be refused (a real request without a token is a 401: test_api.py).
            excluded.append(negative_data_rejection)
        response = case.call_and_validate(headers=headers, excluded_checks=excluded)
        assert response.status_code < 500
        ANSWERED[label, who].add(response.status_code)
        if mode is GenerationMode.POSITIVE and response.status_code == 400:
            detail = response.json().get("detail", "")
            assert (with_cursor and response.json() == BAD_CURSOR) or (with_period and "must be before to (" in detail), (
                response.text
            )

    answers_as_documented()


def test_the_fuzzing_reached_the_data_with_both_tokens() -> None:
    """Had the tokens stopped working, every answer would be a documented 401 and the checks would
    pass: each token must have read the seeded data (run after the fuzzing, in this module's order)."""
    assert ANSWERED, "the fuzzing runs first, in this module's order"
    for who in TOKENS:
        for label in ("GET /v1/accounts/{account_id}/balances", "GET /v1/accounts/{account_id}/history", "GET /v1/offers"):
            assert 200 in ANSWERED[label, who], (label, who, ANSWERED[label, who])
        assert 200 in ANSWERED["PUT /v1/accounts/{account_id}/offers/{offer_id}/activation", "customer"]
    assert 200 in ANSWERED["GET /v1/charities/{charity_id}/donations", "operations"]
    assert 200 in ANSWERED["GET /v1/operations/ledger-conflicts", "operations"]


# --- the cases a past probe found, pinned --------------------------------------------------------


def _cursor(number: int) -> str:
    return base64.urlsafe_b64encode(str(number).encode()).decode()


@pytest.mark.parametrize(
    "cursor", [_cursor(2**63), _cursor(-(2**63)), _cursor(10**40), _cursor(-(10**40)), _cursor(0), "AAAA", "AA==", "_-_-"]
)
@pytest.mark.parametrize("path", [f"/v1/accounts/{ACCOUNT}/history", "/v1/operations/ledger-conflicts"])
def test_a_cursor_it_never_returned_is_a_400(api_url: str, path: str, cursor: str) -> None:
    headers = {"Authorization": f"Bearer {TOKENS['operations']()}"}
    response = httpx.get(f"{api_url}{path}", params={"cursor": cursor}, headers=headers)
    assert (response.status_code, response.json()) == (400, BAD_CURSOR)


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ({"cursor": "not base64!"}, 422),  # not of the cursor's form
        ({"cursor": "A" * 65}, 422),  # too long
        ({"limit": "0"}, 422),
        ({"limit": "501"}, 422),
        ({"limit": str(2**64)}, 422),
        ({"limt": "5"}, 400),  # a parameter the route does not take
        ({"limit": "5\x00"}, 400),  # a control character: refused before any route reads it
    ],
)
def test_absurd_queries_are_refused(api_url: str, query: dict[str, str], status: int) -> None:
    headers = {"Authorization": f"Bearer {TOKENS['operations']()}"}
    response = httpx.get(f"{api_url}/v1/accounts/{ACCOUNT}/history", params=query, headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["detail"]


@pytest.mark.parametrize("account_id", ["null", "__proto__", "constructor", "0", "-", "..x"])
def test_odd_but_valid_account_ids_need_a_token_naming_them(api_url: str, account_id: str) -> None:
    """Ids such as ``null`` or ``__proto__`` fit the account id pattern, so they are account ids: a
    customer token acts only for the accounts it names (404 otherwise), one naming them may activate."""
    path = f"/v1/accounts/{account_id}/offers/{OFFER}/activation"
    others = {"Authorization": f"Bearer {api_token([OFFERS_ACTIVATE], [ACCOUNT])}"}
    named = {"Authorization": f"Bearer {api_token([OFFERS_ACTIVATE], [account_id])}"}
    operations = {"Authorization": f"Bearer {TOKENS['operations']()}"}
    with httpx.Client(base_url=api_url) as client:
        assert client.put(path, headers=others).status_code == 404
        assert client.put(path, headers=operations).status_code == 403  # operations read, they do not activate
        accepted = client.put(path, headers=named)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["account_id"] == account_id
