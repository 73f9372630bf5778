"""The composition root: what every process and command is built from, made one way here (the
codec with its registry, the topic catalogue, the topics and the database schema), and the
operator's errors (``UsageError``: one line, exit code 2). The command line (``stream.cli``) only
parses arguments and calls these; the development stack (``stream.localstack``) uses them too.
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
from topics.catalogue import Catalogue, catalogue

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
    return catalogue(settings.topic_prefix, settings.topic_partitions)


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
