"""Kafka over TLS, against a real broker: the whole pipeline over SASL_SSL (SCRAM-SHA-512) and over
mutual TLS; the broker refusing a wrong SCRAM password or user and a client without a certificate,
and a client without the local CA refusing the broker; a restarted broker keeping its certificates
and user.

The module starts its own broker with those listeners (``KafkaBroker(..., secure=True)``: a CA, a
broker and a client certificate and a SCRAM user made for it), always, whatever
KAFKA_BOOTSTRAP_SERVERS says; Postgres is the session's. Each pipeline is the project's real
processes (topics and offers by the CLI, worker, sink, API with its offer mirror and producer)
configured only through the documented variables: KAFKA_SECURITY_PROTOCOL, KAFKA_SSL_CAFILE,
KAFKA_SSL_CERTFILE/KEYFILE, KAFKA_SASL_*.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer

from stream.auth import OFFERS_ACTIVATE
from stream.localstack.kafka import DEFAULT_CACHE_DIR, KafkaBroker
from stream.localstack.kafka_security import SecureListeners
from stream.settings import Settings
from tests.factories import card_record
from tests.integration.conftest import REPO_ROOT, api_headers, running_pipeline
from tests.integration.test_end_to_end import topic_for, wait_for_balance, wire

pytestmark = pytest.mark.integration

OFFERS = REPO_ROOT / "tests" / "integration" / "offers.yaml"
Protocol = Literal["SASL_SSL", "SSL"]


@pytest.fixture(scope="module")
def broker(work_dir: Path) -> Iterator[KafkaBroker]:
    """One broker for the module, with its SASL_SSL and SSL (client certificate required) listeners."""
    with KafkaBroker(DEFAULT_CACHE_DIR, work_dir / "kafka-secure", secure=True) as running:
        yield running


@pytest.fixture
def listeners(broker: KafkaBroker) -> SecureListeners:
    assert broker.secure_listeners is not None
    return broker.secure_listeners


async def _publish(env: dict[str, str], records: list[dict[str, Any]]) -> None:
    """Card events as a card processor sends them (the wire format by hand), over the listener the
    settings name."""
    settings = Settings.from_env(env)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", enable_idempotence=True, **settings.kafka_client_options()
    )
    await producer.start()
    try:
        for record in records:
            await producer.send_and_wait(topic_for(env, record), wire(record), key=record["account_id"].encode())
    finally:
        await producer.stop()


async def _ledger_balance(database_url: str, account: str) -> dict[str, int] | None:
    connection = await asyncpg.connect(database_url)
    try:
        row = await connection.fetchrow(
            "SELECT confirmed_minor, lifetime_earned_minor FROM balances WHERE account_id = $1", account
        )
        return dict(row) if row else None
    finally:
        await connection.close()


@pytest.mark.parametrize("protocol", ["SASL_SSL", "SSL"])
def test_the_pipeline_runs_over_tls(
    protocol: Protocol, listeners: SecureListeners, request: pytest.FixtureRequest, postgres_url: str, work_dir: Path
) -> None:
    """Topics, offers, worker, sink, API and a CLI command, every Kafka client on the secured
    listener: a purchase and its clearing become a balance in Postgres and in the API."""
    security = listeners.client_env(protocol)
    bootstrap = security.pop("KAFKA_BOOTSTRAP_SERVERS")
    name = f"tls-{protocol.lower().replace('_', '')}"
    with running_pipeline(request, bootstrap, postgres_url, work_dir, name, OFFERS, **security) as (processes, base_url):
        env = processes.env
        account = f"{name}-a"
        ref = f"{account}-ref"
        records = [
            card_record("AUTHORIZATION", 10_000, account_id=account, transaction_ref=ref, event_id=f"{account}-1"),
            card_record("CLEARING", 8_000, account_id=account, transaction_ref=ref, event_id=f"{account}-2"),
        ]
        asyncio.run(_publish(env, records))
        wait_for_balance(
            base_url,
            account,
            {
                "pending_minor": 0,
                "confirmed_minor": 400,
                "available_minor": 0,
                "lifetime_earned_minor": 400,
                "clawed_back_minor": 0,
                "donated_minor": 0,
                "held_minor": 0,
                "paid_out_minor": 0,
                "redeemed_minor": 0,
            },
            timeout_s=90,
        )
        assert asyncio.run(_ledger_balance(env["DATABASE_URL"], account)) == {
            "confirmed_minor": 400,
            "lifetime_earned_minor": 400,
        }
        # The API's offer mirror (it is ready once the offers are read) and its producer (an activation).
        assert "grocery-5" in {offer["offer_id"] for offer in httpx.get(f"{base_url}/v1/offers", headers=api_headers()).json()}
        activation = httpx.put(
            f"{base_url}/v1/accounts/{account}/offers/grocery-5/activation",
            headers=api_headers([OFFERS_ACTIVATE], [account]),
            timeout=30,
        )
        assert activation.status_code == 200 and activation.json()["active"] is True, activation.text
        # The operator's commands take the same settings.
        assert "0 dead letters shown" in processes.cli("dead-letters")
        processes.cli("topics")
        secret = security.get("KAFKA_SASL_PASSWORD")
        if secret:
            for process in ("worker", "sink", "api"):
                assert secret not in processes.log(process), f"the {process} logged the SASL password"


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """A command run as an operator runs it, with only the Kafka settings given. (Refused clients are
    tried this way, not in the test process: a TLS handshake the broker refuses leaves asyncio's
    socket transport unclosed, and its ResourceWarning would fail whichever test ran when it is
    collected.)"""
    return subprocess.run(
        [sys.executable, "-m", "stream", *args],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}, "TOPIC_PREFIX": "tls-cli.", **env},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _refused(env: dict[str, str], *expected: str) -> str:
    """Run ``stream topics`` with ``env``: refused by the broker (or its certificate refused), one line and
    exit code 2 naming ``expected``; returns that line."""
    result = _cli(env, "topics")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("cashback topics: ") and all(part in line for part in expected), result.stderr
    return line


def test_a_wrong_scram_password_or_user_is_refused(listeners: SecureListeners) -> None:
    env = listeners.client_env("SASL_SSL")
    line = _refused({**env, "KAFKA_SASL_PASSWORD": "not-the-password"}, "refused the SASL login", "SaslAuthenticationFailed")
    assert "not-the-password" not in line
    _refused({**env, "KAFKA_SASL_USERNAME": "someone-else"}, "refused the SASL login", "SaslAuthenticationFailed")


def test_the_mutual_tls_listener_refuses_a_client_without_a_certificate(listeners: SecureListeners) -> None:
    env = listeners.client_env("SSL")
    without_certificate = {k: v for k, v in env.items() if k not in ("KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE")}
    _refused(without_certificate, "cannot reach Kafka", "KAFKA_SSL_*")
    # A certificate without its key stops the command before it connects, naming the variable.
    _refused({k: v for k, v in env.items() if k != "KAFKA_SSL_KEYFILE"}, "KAFKA_SSL_KEYFILE is required")


def test_a_client_checks_the_brokers_certificate(listeners: SecureListeners) -> None:
    """Without the local CA, a client does not trust the broker (the system's CAs did not sign it)."""
    protocols: tuple[Protocol, ...] = ("SASL_SSL", "SSL")
    for protocol in protocols:
        env = {k: v for k, v in listeners.client_env(protocol).items() if k != "KAFKA_SSL_CAFILE"}
        _refused(env, "cannot reach Kafka", "CERTIFICATE_VERIFY_FAILED")


def test_a_restarted_broker_keeps_its_certificates_and_users(broker: KafkaBroker) -> None:
    """Restarted on its data dir (new ports), the broker serves the same CA and SCRAM user: clients
    configured before keep working (last in the module: the ports change)."""
    before = broker.secure_listeners
    assert before is not None
    ca = before.security.ca_file.read_bytes()
    broker.stop()
    broker.start()
    after = broker.secure_listeners
    assert after is not None and after.security == before.security and after.security.ca_file.read_bytes() == ca
    for private in ("broker.pem", "client-key.pem", "scram-user.json"):
        assert (after.security.directory / private).stat().st_mode & 0o777 == 0o600, private
    protocols: tuple[Protocol, ...] = ("SASL_SSL", "SSL")
    for protocol in protocols:
        result = _cli(after.client_env(protocol), "topics")
        assert result.returncode == 0, result.stderr
