"""The composition root: what every process and command is built from, made one way here (the
codec with its registry, the topic catalogue, the topics and the database schema), and the
operator's errors (``UsageError``: one line, exit code 2). The processes (worker, sink, API) are
built and run here. The command line (``stream.cli``) only parses arguments and calls these; the
development stack (``stream.localstack``) uses them too.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from schemas.codec import Codec
from stream.settings import Settings
from topics.catalogue import Catalogue

if TYPE_CHECKING:
    from stream.core.offers import Offer

log = logging.getLogger("cashback")

REPO_ROOT = Path(__file__).resolve().parent.parent
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


def build_codec(settings: Settings) -> Codec:
    import httpx

    try:
        return Codec.configured(settings.schema_registry_url)
    except httpx.HTTPError as error:
        raise UsageError(f"cannot use the schema registry at {settings.schema_registry_url}: {error}") from None


def topics_of(settings: Settings) -> Catalogue:
    return settings.topics()


async def create_topics(settings: Settings) -> list[str]:
    """The catalogue's topics and the matcher's table changelogs."""
    from topics.admin import ensure_topics
    from topics.catalogue import table_changelogs

    topics = topics_of(settings)
    return await ensure_topics(
        settings.kafka_bootstrap_servers,
        (*topics.all(), *table_changelogs(settings.app_id, topics.authorizations.partitions)),
        settings.topic_replication_factor,
        **settings.kafka_client_options(),
    )


async def migrate_database(settings: Settings) -> list[str]:
    import asyncpg

    from stream.store.migrations import migrate

    try:
        connection = await asyncpg.connect(settings.database_url, timeout=30)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        reason = str(error) or type(error).__name__
        raise UsageError(f"cannot connect to Postgres at {masked_dsn(settings.database_url)}: {reason}") from None
    try:
        return await migrate(connection)
    finally:
        await connection.close()


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


# --- the processes -----------------------------------------------------------------------------


def run_worker(settings: Settings, with_sink: bool = False) -> None:
    """The worker process: topics and schema ensured, metrics served, the matcher (and the sink in
    the same process when asked) under Faust's worker until it is stopped."""
    import faust
    import uvloop

    from stream import metrics
    from stream.matcher import Matcher

    asyncio.run(create_topics(settings))
    asyncio.run(migrate_database(settings))  # campaign budgets live in Postgres
    metrics.serve(settings.metrics_port)
    uvloop.install()
    matcher = Matcher(settings, build_codec(settings))
    if with_sink:
        from stream.sink import Sink

        sink = Sink(settings, matcher.topics, matcher.codec)
        matcher.app.task(sink.run)
    faust.Worker(matcher.app, loglevel=settings.log_level.lower(), quiet=True).execute_from_commandline()


def run_sink(settings: Settings) -> None:
    """The sink process, until SIGINT or SIGTERM."""
    from stream import metrics
    from stream.sink import Sink

    async def main(stop: asyncio.Event) -> None:
        await create_topics(settings)
        await migrate_database(settings)
        metrics.serve(settings.metrics_port)
        sink = Sink(settings, topics_of(settings), build_codec(settings))
        task = asyncio.create_task(sink.run())
        await asyncio.wait([task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        sink.stop()
        await task

    run_until_signalled(main)


def run_api(settings: Settings) -> None:
    """The balance API process (uvicorn), the schema migrated first."""
    import uvicorn

    from stream.api import create_app

    asyncio.run(migrate_database(settings))
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        loop="uvloop",
        access_log=False,
    )
