"""The database schema: the SQL files of ``migrations/`` (shipped inside the package), applied in
name order, each once, each in a transaction."""

from __future__ import annotations

import logging
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_MIGRATION_LOCK = 0x636173686261636B  # "cashback": one migrator at a time across processes


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    """The SQL files, in the order they apply. None is an error, never "nothing to do": a package
    built without them would migrate nothing and report ready."""
    files = sorted(directory.glob("*.sql"))
    if not files:
        raise FileNotFoundError(f"no migrations in {directory}: the package was built without its SQL files")
    return files


async def migrate(connection: asyncpg.Connection, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply the SQL files of ``directory`` not applied yet, in name order, each in a transaction.
    Safe to call from several processes at once. Returns the names applied."""
    applied: list[str] = []
    await connection.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row["name"] for row in await connection.fetch("SELECT name FROM schema_migrations")}
        for path in migration_files(directory):
            if path.name in done:
                continue
            async with connection.transaction():
                await connection.execute(path.read_text())
                await connection.execute("INSERT INTO schema_migrations (name) VALUES ($1)", path.name)
            applied.append(path.name)
            log.info("applied migration %s", path.name)
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied


async def pending_migrations(connection: asyncpg.Connection, directory: Path = MIGRATIONS_DIR) -> list[str]:
    exists = await connection.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    done = {r["name"] for r in await connection.fetch("SELECT name FROM schema_migrations")} if exists else set()
    return [p.name for p in migration_files(directory) if p.name not in done]
