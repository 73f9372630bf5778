"""The whole system on one machine: ``cashback local`` (what ``make run`` runs).

Starts a real single-node Kafka (KRaft) and an embedded Postgres unless KAFKA_BOOTSTRAP_SERVERS
or DATABASE_URL point at existing ones, creates the topics, migrates the ledger, loads offers,
then runs the worker, the sink, the balance API, a stand-in for the bank's core banking system
(``stream.localstack.core_banking``: it answers the payouts, most confirmed, a few rejected), the
simulator with a stand-in for the bank's app redeeming points and store credit through the API
(``stream.localstack.bank_app``) and (if installed) Prometheus as child processes. Every port is
picked free, so two runs can coexist. Ctrl-C (or SIGTERM) stops everything it started, children
first; a child that dies takes the stack down with a non-zero exit. Children are also killed by the kernel if this process dies.

Demo data goes only where the stack owns the servers: with its own Kafka and Postgres it loads the
example offers and runs the simulator by default; when either server is an existing one (the
variables are set), it loads no offers and simulates nothing unless told to (``offers`` /
``simulator``), so a real cluster never receives demo offers or simulated card traffic.

The stack's API trusts one key only, made for the run (``auth/`` in the data directory: the
private key and the JWKS the API reads), whatever API_AUTH_* say; the banner prints a customer
token for the demo account and an operations token, signed with it and valid for 12 hours.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from stream.composition import EXAMPLE_OFFERS, REPO_ROOT, System, UsageError, masked_dsn, read_offers
from stream.core.offers import Offer
from stream.localstack import prometheus
from stream.localstack.kafka import DEFAULT_CACHE_DIR, KafkaBroker
from stream.localstack.postgres import EmbeddedPostgres
from stream.localstack.process import free_ports, spawn, terminate
from stream.localstack.tokens import DEMO_TTL_S, LOCAL_ISSUER, SigningKey, mint, write_jwks
from stream.offer_admin import publish_offers

READY_LINE = "cashback local stack is up"
OFFERS_EXAMPLES = "examples"  # ``offers``: the example offers (deploy/offers/example.yaml)
OFFERS_NONE = "none"  # ``offers``: publish none
DEMO_ACCOUNT = "acct-000001"
LOCAL_PAYOUT_SCHEDULE = ",".join(f"{minute // 60:02d}:{minute % 60:02d}" for minute in range(0, 24 * 60, 10))


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    log_path: Path | None
    required: bool = True  # its exit stops the stack (the simulator may finish on its own)


@dataclass
class LocalStack:
    rate: float = 50.0
    purchases: int = 0
    duration_s: float | None = None
    keep_data: bool = False
    offers: str | None = None  # a YAML file, OFFERS_EXAMPLES or OFFERS_NONE; None: examples only on its own servers
    simulator: bool | None = None  # None: on only when the stack started both Kafka and Postgres
    data_dir: Path = field(default_factory=lambda: REPO_ROOT / ".data" / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")

    def __post_init__(self) -> None:
        self.children: list[Child] = []
        self.broker: KafkaBroker | None = None
        self.postgres: EmbeddedPostgres | None = None
        self._stop = False
        self._offers_file: Path | None = None
        self._offers: list[Offer] = []
        self._simulate = False
        self._own_servers = False  # the stack started Kafka and Postgres itself (demo data, stand-ins)
        self._tokens: dict[str, str] = {}

    def _offers_given(self) -> None:
        """Read an offers file named explicitly before anything starts (UsageError if it is bad)."""
        if self.offers is None or self.offers == OFFERS_NONE:
            return
        self._offers_file = EXAMPLE_OFFERS if self.offers == OFFERS_EXAMPLES else Path(self.offers)
        self._offers = read_offers(self._offers_file)
        if not self._offers:
            raise UsageError(f"offers file {self._offers_file}: no offers in it")

    def _decide_demo(self) -> None:
        """What to publish and simulate, now that it is known whose servers these are."""
        own_servers = self._own_servers = self.broker is not None and self.postgres is not None
        if self.offers is None and own_servers:
            self._offers_file = EXAMPLE_OFFERS
            self._offers = read_offers(EXAMPLE_OFFERS)
        self._simulate = own_servers if self.simulator is None else self.simulator

    def run(self) -> None:
        self._offers_given()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        code = 0
        try:
            env = self._start_infrastructure()
            self._start_children(env)
            code = self._watch()
        except KeyboardInterrupt:
            pass
        finally:
            self._shutdown()
        raise SystemExit(code)

    def _on_signal(self, signum: int, frame: object) -> None:
        if self._stop:  # second Ctrl-C: stop waiting politely
            raise KeyboardInterrupt
        self._stop = True

    def _say(self, text: str) -> None:
        print(text, flush=True)

    def _start_infrastructure(self) -> dict[str, str]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        if "KAFKA_BOOTSTRAP_SERVERS" not in os.environ:
            self._say("starting Kafka (KRaft, single node)...")
            self.broker = KafkaBroker(DEFAULT_CACHE_DIR, self.data_dir / "kafka")
            env["KAFKA_BOOTSTRAP_SERVERS"] = self.broker.start()
        if "DATABASE_URL" not in os.environ:
            self._say("starting Postgres (embedded)...")
            self.postgres = EmbeddedPostgres(self.data_dir / "postgres")
            env["DATABASE_URL"] = self.postgres.start()
        env.update(WORKER_DATA_DIR=str(self.data_dir / "worker"), PYTHONUNBUFFERED="1")
        # The local ledger is small: offer results every 30 s, as the reconciliation gauges, not every 5 minutes,
        # so the dashboards' offer panels fill while one watches (unless the environment says otherwise).
        env.setdefault("OFFER_RESULTS_INTERVAL_S", "30")
        system = System.from_env(env)
        self._decide_demo()
        if self._own_servers:
            # Payouts while one watches: a run every 10 minutes of every 1.00 (100 minor units) or more,
            # answered by the core banking stand-in (stream.localstack.core_banking), unless the environment
            # says otherwise. Only on the stack's own servers: a real cluster's payouts are the bank's.
            env.setdefault("PAYOUT_SCHEDULE", LOCAL_PAYOUT_SCHEDULE)
            env.setdefault("PAYOUT_MINIMUMS", "*=100")
            env.setdefault("DONATION_SCHEDULE", LOCAL_PAYOUT_SCHEDULE)  # charities' remittances too (stream.donations)
        if self._simulate:
            # The simulator's timeline runs thousands of times faster than the wall clock (a purchase every
            # 5 simulated minutes), so within the hour its events are dated months ahead of the worker's clock.
            env.setdefault("EVENT_AHEAD_LIMIT_DAYS", "off")
        asyncio.run(system.create_topics())
        asyncio.run(system.migrate_database())
        if self._offers:
            topic = system.catalogue.offers.name
            asyncio.run(publish_offers(system.settings, system.codec, topic, self._offers))
            self._say(f"loaded {len(self._offers)} offers from {self._shown(self._offers_file)} to {topic}")
        return env

    @staticmethod
    def _shown(path: Path | None) -> str:
        if path is None:
            return "-"
        try:
            return str(path.resolve().relative_to(REPO_ROOT))
        except ValueError:
            return str(path)

    def _demo_lines(self) -> str:
        whose = "the stack's own" if self.broker is not None and self.postgres is not None else "existing"
        if self._offers:
            offers = f"{len(self._offers)} loaded from {self._shown(self._offers_file)}"
        else:
            offers = f"none loaded into {whose} servers (--offers FILE or --offers examples loads some)"
        if self._simulate:
            purchases = f"{self.purchases} purchases" if self.purchases else "endless"
            simulator = f"on, {self.rate:g} events/s, {purchases}"
        else:
            simulator = f"off for {whose} servers (--simulator turns it on)"
        return f"  offers        {offers}\n  simulator     {simulator}\n"

    def _spawn(self, name: str, args: list[str], env: dict[str, str], required: bool = True, to_log: bool = True) -> None:
        log_path = self.data_dir / f"{name}.log" if to_log else None
        output = open(log_path, "ab") if log_path else None  # noqa: SIM115 - closed with the child
        process = spawn(args, env=env, stdout=output or None, stderr=subprocess.STDOUT if output else None, cwd=REPO_ROOT)
        if output:
            output.close()
        self.children.append(Child(name, process, log_path, required))

    def _auth_env(self) -> dict[str, str]:
        """The API's token settings: a key pair made for this run, its JWKS, and the banner's tokens."""
        from stream.auth import ACCOUNTS_READ, OFFERS_ACTIVATE, OPERATIONS
        from stream.settings import Settings

        directory = self.data_dir / "auth"
        key = SigningKey.generate()
        key.write_private(directory / "signing-key.pem")
        write_jwks(directory / "jwks.json", [key])
        audience = Settings.model_fields["api_auth_audience"].default
        self._tokens = {
            "customer": mint(
                key,
                issuer=LOCAL_ISSUER,
                audience=audience,
                scopes=[ACCOUNTS_READ, OFFERS_ACTIVATE],
                accounts=[DEMO_ACCOUNT],
                subject="demo-bank-app",
                ttl_s=DEMO_TTL_S,
            ),
            "operations": mint(
                key, issuer=LOCAL_ISSUER, audience=audience, scopes=[OPERATIONS], subject="demo-operator", ttl_s=DEMO_TTL_S
            ),
        }
        return {"API_AUTH_JWKS": str(directory / "jwks.json"), "API_AUTH_ISSUER": LOCAL_ISSUER, "API_AUTH_AUDIENCE": audience}

    def _start_children(self, env: dict[str, str]) -> None:
        cli = [sys.executable, "-m", "stream"]
        # Every port at once, all different (Prometheus's too: it starts before the API is listening).
        *served, web = free_ports(4)
        ports = dict(zip(("worker", "sink", "api"), served, strict=True))
        # One dead-letter hash key for the run's worker and sink (unless given): their hashes of a card number match.
        hashing = {"DEAD_LETTER_HASH_KEY": env.get("DEAD_LETTER_HASH_KEY") or secrets.token_hex(32)}
        self._spawn("worker", cli + ["worker"], {**env, **hashing, "METRICS_PORT": str(ports["worker"])})
        self._spawn("sink", cli + ["sink"], {**env, **hashing, "METRICS_PORT": str(ports["sink"])})
        api_env = {**env, **self._auth_env(), "API_PORT": str(ports["api"]), "API_HOST": "127.0.0.1"}
        self._spawn("api", cli + ["api"], api_env)
        if self._own_servers:
            # A stand-in for the bank's core banking system: answers the payouts (the stack's own servers only:
            # it must never answer a real cluster's payouts).
            self._spawn("core-banking-standin", [sys.executable, "-m", "stream.localstack.core_banking"], env)
        prometheus_url = self._start_prometheus(ports, web)
        api = f"http://127.0.0.1:{ports['api']}"
        self._wait_ready(f"{api}/readyz")
        if self._simulate:
            # A stand-in for the bank's app: redeems some points and store credit through the API (stream.localstack.bank_app).
            app = {"BANK_APP_API_URL": api, "BANK_APP_SIGNING_KEY": str(self.data_dir / "auth" / "signing-key.pem")}
            self._spawn("bank-app-standin", [sys.executable, "-m", "stream.localstack.bank_app"], {**env, **app}, required=False)
        hours = f"{DEMO_TTL_S // 3600} h"
        self._say(
            f"\n{READY_LINE}\n"
            f"  balance API   {api}/v1/accounts/{DEMO_ACCOUNT}/balances   (docs: {api}/docs)\n"
            f"  history       {api}/v1/accounts/{DEMO_ACCOUNT}/history\n"
            f"  token         {self._tokens['customer']}\n"
            f"                ({DEMO_ACCOUNT}: accounts.read, offers.activate; {hours})\n"
            f"  ops token     {self._tokens['operations']}\n"
            f"                (cashback:operations: any account, /v1/operations/*, donations; {hours})\n"
            f'  try           curl -H "Authorization: Bearer {self._tokens["customer"]}" {api}/v1/accounts/{DEMO_ACCOUNT}/balances\n'
            f"                (more tokens: {self._token_command()})\n"
            f"  metrics       worker http://127.0.0.1:{ports['worker']}/metrics  sink http://127.0.0.1:{ports['sink']}/metrics  api {api}/metrics\n"
            + self._prometheus_lines(prometheus_url)
            + f"  kafka         {env['KAFKA_BOOTSTRAP_SERVERS']}   (topics {env.get('TOPIC_PREFIX', 'cashback.')}*)\n"
            f"  postgres      {masked_dsn(env['DATABASE_URL'])}{self._password_hint()}\n"
            + self._demo_lines()
            + f"  logs and data {self.data_dir}\n"
            f"  dead letters  {self._dead_letters_command(env)}\n"
            "Ctrl-C stops everything.\n"
        )
        if self._simulate:
            simulate = cli + ["simulate", "--rate", str(self.rate), "--purchases", str(self.purchases)]
            self._spawn("simulator", simulate, env, required=False, to_log=False)

    def _password_hint(self) -> str:
        """Where the stack's own Postgres keeps its superuser's password (never the password itself)."""
        if self.postgres is None:
            return ""
        return f"   (password in {self.postgres.password_path})"

    def _token_command(self) -> str:
        """The command that mints another token for this stack's API, runnable from any shell."""
        import shlex

        key = shlex.quote(str(self.data_dir / "auth" / "signing-key.pem"))
        return (
            f"{shlex.quote(sys.executable)} -m stream token --key {key} --issuer {LOCAL_ISSUER} "
            f"--account {DEMO_ACCOUNT} --scope cashback:accounts.read"
        )

    @staticmethod
    def _dead_letters_command(env: dict[str, str]) -> str:
        """The command that lists this stack's dead letters, runnable from any shell."""
        import shlex

        names = ["KAFKA_BOOTSTRAP_SERVERS"] + (["TOPIC_PREFIX"] if "TOPIC_PREFIX" in env else [])
        assignments = " ".join(f"{n}={shlex.quote(env[n])}" for n in names)
        return f"{assignments} {shlex.quote(sys.executable)} -m stream dead-letters"

    def _wait_ready(self, url: str, timeout_s: float = 90.0) -> None:
        """Wait for the API to answer ready (its database is migrated); fail if a child died."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self._stop:
            for child in self.children:
                if child.process.poll() is not None:
                    raise RuntimeError(f"{child.name} exited with code {child.process.returncode} during start-up")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        if not self._stop:
            raise RuntimeError(f"the API was not ready after {timeout_s:.0f}s ({url})")

    def _start_prometheus(self, ports: dict[str, int], port: int) -> str | None:
        """Prometheus, where installed, listening on ``port``: one scrape job per process
        (``cashback-worker``, ...), the alert and recording rules of deploy/prometheus/rules.yml loaded.
        Returns its URL (None: not installed)."""
        binary = shutil.which("prometheus")
        if binary is None:
            return None
        config = self.data_dir / "prometheus.yml"
        config.write_text(prometheus.config_text(ports))
        self._spawn("prometheus", prometheus.command(binary, config, port, self.data_dir / "prometheus"), dict(os.environ))
        return f"http://127.0.0.1:{port}"

    def _prometheus_lines(self, url: str | None) -> str:
        """The banner's Prometheus and dashboards lines: where it is, and how many rules it loaded."""
        if url is None:
            return "  prometheus    not installed (apt-get install prometheus), skipped\n"
        rules = prometheus.loaded_rules(url)
        alerts = sum(1 for rule in rules if rule.get("type") == "alerting")
        loaded = f"{len(rules)} rules ({alerts} alerts) from {self._shown(prometheus.RULES)}" if rules else "no rules loaded"
        return (
            f"  prometheus    {url}   ({loaded}; {url}/alerts)\n"
            f"  dashboards    {self._shown(prometheus.DASHBOARDS)}/*.json (Grafana); pictures from this Prometheus:\n"
            f"                make dashboards PROMETHEUS_URL={url}   (PNGs in build/dashboards/)\n"
        )

    def _watch(self) -> int:
        deadline = None if self.duration_s is None else time.monotonic() + self.duration_s
        while not self._stop and (deadline is None or time.monotonic() < deadline):
            for child in self.children:
                code = child.process.poll()
                if code is not None and child.required:
                    self._say(f"{child.name} exited with code {code}; stopping the stack")
                    if child.log_path and child.log_path.exists():
                        tail = child.log_path.read_text(errors="replace").splitlines()[-30:]
                        self._say("\n".join(f"  | {line}" for line in tail))
                    return 1
            time.sleep(0.5)
        return 0

    def _shutdown(self) -> None:
        self._say("stopping...")
        for child in reversed(self.children):  # simulator first, the worker last but one
            terminate(child.process, grace_s=15.0)
        if self.postgres is not None:
            self.postgres.stop()
        if self.broker is not None:
            self.broker.stop()
        if not self.keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        self._say("stopped")
