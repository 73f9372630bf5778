"""The composition root: ``System``, what every process and command is built from, each part
made once and one way here (the settings, the topic catalogue, the codec with its registry), which
creates the topics, migrates the database schema and builds and runs the processes (worker, sink,
API). Beside it, what needs no state: the operator's errors (``UsageError``: one line, exit code
2), reading an offers file, a DSN with its password masked, and running a coroutine until SIGINT
or SIGTERM. The command line (``stream.cli``) only parses arguments and builds the ``System`` its
commands (``stream.commands``) use; the development stack (``stream.localstack``) builds its own.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import signal
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from schemas.codec import Codec
from stream.settings import Settings
from topics.catalogue import Catalogue

if TYPE_CHECKING:
    from stream.abuse_scan import MerchantScan
    from stream.core.abuse import AbuseRules
    from stream.core.offers import Offer
    from stream.donations import DonationSchedule

REPO_ROOT = Path(__file__).resolve().parent.parent

# The worker's garbage collector runs a young collection every 10,000 net allocations of container objects
# instead of 700 (each older generation still every 10 of the one below). A worker keeps hundreds of
# thousands of objects alive (the states it caches, Faust's and aiokafka's), and the collector's passes
# over them, set off by the many short-lived dicts each message makes, took about a fifth of the engine's
# time: replaying 96,077 simulated events over 20,000 accounts, 22% of the CPU in 750/68/6 collections
# with the default, 6% in 53/4/0 with this one. Cyclic garbage waits a little longer to be freed; the
# local stores' explicit collections (Faust's, on revocation) are unchanged.
WORKER_GC_THRESHOLD = (10_000, 10, 10)
API_GRACEFUL_S = 15  # what the requests still running at an API stop get (a publish waits 10 s at most)
EXAMPLE_OFFERS = REPO_ROOT / "deploy" / "offers" / "example.yaml"


class UsageError(Exception):
    """Bad input from the operator: ``main`` prints the message as one line and exits with 2."""


def masked_dsn(dsn: str) -> str:
    """``dsn`` with its password (in the user part or the query) replaced by ``***``."""
    try:
        parts = urlsplit(dsn)
        netloc = parts.netloc
        if "@" in netloc:
            user, _, host = netloc.rpartition("@")
            if ":" in user:
                user = user.split(":", 1)[0] + ":***"
            netloc = f"{user}@{host}"
        query = urlencode(
            [(k, "***" if k.lower() == "password" else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)],
            safe="*",
        )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<unparsable DSN>"


def read_offers(path: str | Path) -> list[Offer]:
    """The offers of a YAML file; UsageError naming the file for a missing, unreadable or invalid one."""
    import yaml

    from stream.core.offers import OfferError
    from stream.offer_admin import load_offers_file

    try:
        return load_offers_file(Path(path))
    except FileNotFoundError:
        raise UsageError(f"offers file {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"offers file {path}: is a directory, not a YAML file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"offers file {path}: cannot read it ({error})") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise UsageError(f"offers file {path}: not valid YAML{at}: {problem}") from None
    except OfferError as error:
        raise UsageError(f"offers file {path}: {error}") from None


def read_abuse_rules(path: str | Path | None, variable: str | None = "ABUSE_RULES_FILE") -> AbuseRules:
    """The abuse rules of a YAML file (None: the documented defaults); UsageError naming the file (and
    the ``variable`` that named it) and the field for a missing, unreadable or invalid one."""
    import yaml

    from stream.core.abuse import DEFAULT_RULES, AbuseRulesError, parse_rules

    if path is None:
        return DEFAULT_RULES
    where = f"abuse rules file {path}" + (f" ({variable})" if variable else "")
    try:
        return parse_rules(yaml.safe_load(Path(path).read_text()))
    except FileNotFoundError:
        raise UsageError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"{where}: cannot read it ({error})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise UsageError(f"{where}: not valid YAML{at}: {getattr(error, 'problem', None) or type(error).__name__}") from None
    except AbuseRulesError as error:
        raise UsageError(f"{where}: {error}") from None


def run_until_signalled(main: Callable[[asyncio.Event], Coroutine[Any, Any, Any]]) -> None:
    """Run ``main(stop_event)`` on uvloop; SIGINT/SIGTERM set the event for a clean stop."""
    import uvloop

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    uvloop.run(runner())


# --- the composition root ----------------------------------------------------------------------


class System:
    """What one process or command is built from, each part made once: the settings, the topic
    catalogue and the codec (built when first used: with a schema registry configured it registers
    the schemas there, which a command that encodes nothing must not need). The processes and the
    commands take their settings, catalogue and codec from here."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> System:
        """The system the environment (or ``environ``) configures; ConfigError for a bad one,
        the Kafka security options included, before anything starts."""
        settings = Settings.from_env(environ)
        settings.kafka_client_options()
        return cls(settings)

    @functools.cached_property
    def catalogue(self) -> Catalogue:
        return self.settings.topics()

    @functools.cached_property
    def codec(self) -> Codec:
        import httpx

        try:
            return Codec.configured(self.settings.schema_registry_url)
        except httpx.HTTPError as error:
            raise UsageError(f"cannot use the schema registry at {self.settings.schema_registry_url}: {error}") from None

    @functools.cached_property
    def abuse_rules(self) -> AbuseRules:
        """The abuse rules ``ABUSE_RULES_FILE`` configures (read once; UsageError naming the field)."""
        return read_abuse_rules(self.settings.abuse_rules_file)

    async def create_topics(self) -> list[str]:
        """The catalogue's topics and the matcher's table changelogs; the names of those created."""
        from topics.admin import ensure_topics
        from topics.catalogue import table_changelogs

        settings, topics = self.settings, self.catalogue
        return await ensure_topics(
            settings.kafka_bootstrap_servers,
            (*topics.all(), *table_changelogs(settings.app_id, topics.authorizations.partitions)),
            settings.topic_replication_factor,
            **settings.kafka_client_options(),
        )

    async def migrate_database(self) -> list[str]:
        """The ledger's schema migrations applied; the names of those applied now."""
        import asyncpg

        from stream.store.migrations import migrate

        dsn = self.settings.database_url
        try:
            connection = await asyncpg.connect(dsn, timeout=30)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            reason = str(error) or type(error).__name__
            raise UsageError(f"cannot connect to Postgres at {masked_dsn(dsn)}: {reason}") from None
        try:
            return await migrate(connection)
        finally:
            await connection.close()

    # --- the processes ---------------------------------------------------------------------------

    def run_worker(self, with_sink: bool = False) -> None:
        """The worker process: topics and schema ensured, metrics served, the matcher (and the sink
        in the same process when asked) under Faust's worker until it is stopped."""
        import faust
        import uvloop

        from stream import metrics
        from stream.deadletter import configure_hash_key
        from stream.heap import map_large_blocks_apart
        from stream.matcher import Matcher

        settings = self.settings
        gc.set_threshold(*WORKER_GC_THRESHOLD)
        # fetched and produced batches and memtable blocks out of glibc's heap, unmapped when freed (stream.heap)
        map_large_blocks_apart()
        configure_hash_key(settings.dead_letter_hash_key)
        asyncio.run(self.create_topics())
        asyncio.run(self.migrate_database())  # campaign budgets live in Postgres
        metrics.serve(settings.metrics_port, settings.metrics_host)
        uvloop.install()
        matcher = Matcher(settings, self.codec, self.catalogue, abuse=self.abuse_rules)
        if with_sink:
            from stream.sink import Sink

            matcher.app.task(Sink(settings, self.catalogue, self.codec).run)
            from stream.payout_answers import PayoutAnswers

            matcher.app.task(PayoutAnswers(settings, self.catalogue, self.codec).run)
            if scan := self.merchant_scan():
                matcher.app.task(scan.run)
        faust.Worker(matcher.app, loglevel=settings.log_level.lower(), quiet=True).execute_from_commandline()

    def run_sink(self) -> None:
        """The sink process, until SIGINT or SIGTERM."""
        from stream import metrics
        from stream.deadletter import configure_hash_key
        from stream.payout_answers import PayoutAnswers
        from stream.sink import Sink
        from stream.stopping import within

        configure_hash_key(self.settings.dead_letter_hash_key)
        scan = self.merchant_scan()  # a bad ABUSE_RULES_FILE stops the sink here, before anything starts

        async def main(stop: asyncio.Event) -> None:
            await self.create_topics()
            await self.migrate_database()
            metrics.serve(self.settings.metrics_port, self.settings.metrics_host)
            sink = Sink(self.settings, self.catalogue, self.codec)
            task = asyncio.create_task(sink.run())
            scanning = asyncio.create_task(scan.run()) if scan else None
            # Beside the ledger: the bank's answers to payouts into the payouts table, and DONATION_SCHEDULE's runs.
            answers = PayoutAnswers(self.settings, self.catalogue, self.codec)
            answering = asyncio.create_task(answers.run())
            schedule = self.settings.donation_schedule_minutes()
            remitting = asyncio.create_task(self.donation_schedule(schedule).run()) if schedule else None
            await asyncio.wait([task, answering, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
            for side in (scanning, remitting):
                if side is not None:
                    side.cancel()
                    await asyncio.gather(side, return_exceptions=True)
            sink.stop()  # each ends its batch (one waiting for Postgres is left to the next sink), bounded
            answers.stop()
            ended = [await within(what, running) for what, running in (("the sink", task), ("the payout answers", answering))]
            for running in ended:
                if running.done() and not running.cancelled():
                    running.result()  # a crash is the process's: it exits with it

        run_until_signalled(main)

    def donation_schedule(self, schedule: tuple[int, ...]) -> DonationSchedule:
        """DONATION_SCHEDULE's remittance runs (stream.donations)."""
        from stream.donations import DonationSchedule

        return DonationSchedule(self.settings, self.codec, self.catalogue.donation_payouts, schedule)

    def merchant_scan(self) -> MerchantScan | None:
        """The cross-account abuse rule's scan (``stream.abuse_scan``), run beside a sink; None when
        the rule is off or ABUSE_SCAN_INTERVAL_S is 0."""
        from stream.abuse_scan import MerchantScan

        rule = self.abuse_rules.merchant_concentration
        if not rule.enabled or not self.settings.abuse_scan_interval_s:
            return None
        return MerchantScan(self.settings, self.catalogue, self.codec, rule)

    def run_api(self) -> None:
        """The balance API process (uvicorn): its token keys loaded (ConfigError naming API_AUTH_* if
        they cannot be, before anything else), the schema migrated, then served."""
        import uvicorn

        from stream.api import create_app
        from stream.auth import Authenticator

        settings = self.settings
        authenticator = Authenticator.from_settings(settings)
        asyncio.run(self.migrate_database())
        uvicorn.run(
            create_app(settings, self.codec, self.catalogue, authenticator),
            host=settings.api_host,
            port=settings.api_port,
            log_level=settings.log_level.lower(),
            loop="uvloop",
            access_log=False,
            # requests still running at a SIGTERM get this long, then are cancelled: uvicorn waited for them for
            # ever (a request waiting on an outage kept the API from stopping)
            timeout_graceful_shutdown=API_GRACEFUL_S,
        )
