"""Applies the engine's SQL migrations, each once, in order, under an advisory lock.

Migrations are the files ``sql/migrations/NNNN_description.sql``. Each runs in its own
transaction and is recorded in ``pgflow.schema_migrations``; a session advisory lock makes two
processes that migrate at once take turns, the second finding nothing left to do.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import unquote, urlsplit

import asyncpg

from pgflow.db.store import CONNECTION_ERRORS
from pgflow.errors import ConfigurationError, DatabaseUnavailableError

logger = logging.getLogger(__name__)

MIGRATION_LOCK_KEY = 0x7067666C6F77  # "pgflow"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str


def sql_dir() -> Path:
    """The ``sql/`` directory: inside the installed wheel, or the source checkout's."""
    packaged = Path(str(resources.files("pgflow"))) / "sql"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "sql"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    directory = (directory or sql_dir()) / "migrations"
    migrations = []
    for path in sorted(directory.iterdir()):
        match = _NAME.match(path.name)
        if match is None:
            if path.suffix == ".sql":
                raise RuntimeError(f"migration file name {path.name!r} is not NNNN_name.sql")
            continue
        migrations.append(Migration(match.group(1), path.stem, path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a version number in {directory}")
    return migrations


async def migrate(connection: asyncpg.Connection) -> list[str]:
    """Applies every pending migration; returns the names of those it applied."""
    applied_now: list[str] = []
    await connection.execute("select pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await connection.execute(
            """
            create schema if not exists pgflow;
            create table if not exists pgflow.schema_migrations (
              version text primary key,
              name text not null,
              applied_at timestamptz not null default now()
            );
            """
        )
        done = {
            r["version"]
            for r in await connection.fetch("select version from pgflow.schema_migrations")
        }
        for migration in load_migrations():
            if migration.version in done:
                continue
            async with connection.transaction():
                await connection.execute(migration.sql)
                await connection.execute(
                    "insert into pgflow.schema_migrations (version, name) values ($1, $2)",
                    migration.version,
                    migration.name,
                )
            logger.info("applied migration %s", migration.name, extra={"action": "migrate"})
            applied_now.append(migration.name)
    finally:
        await connection.execute("select pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return applied_now


async def migrate_url(url: str) -> list[str]:
    """Connects to ``url`` and migrates.

    Raises:
        DatabaseUnavailableError: the server cannot be reached (a closed port, no route).
        ConfigurationError: it refused the connection (unknown database or role, password) or
            the URL is malformed.
    """
    connection = await connect_or_explain(url)
    try:
        return await migrate(connection)
    finally:
        await connection.close()


async def connect_or_explain(url: str) -> asyncpg.Connection:
    """``asyncpg.connect(url)``, its failures as one-line errors that name the server (never
    the password): a start-up with a wrong URL says what is wrong instead of a traceback."""
    try:
        return await asyncpg.connect(url)
    except (*CONNECTION_ERRORS, asyncpg.PostgresConnectionError) as exc:
        # Unreachable, starting up, shutting down, too many clients: the server, not the URL.
        reason = os.strerror(exc.errno).lower() if isinstance(exc, OSError) and exc.errno \
            else str(exc)
        raise DatabaseUnavailableError(
            f"cannot connect to the database at {describe_url(url)}: "
            f"{reason or type(exc).__name__}"
        ) from exc
    except asyncpg.PostgresError as exc:  # unknown database or role, a wrong password
        raise ConfigurationError(
            f"the database at {describe_url(url)} refused the connection: {exc}"
        ) from exc
    except ValueError as exc:  # asyncpg's DSN parser
        raise ConfigurationError(f"invalid database URL: {exc}") from exc


def describe_url(url: str) -> str:
    """``user@host:port/database`` of a PostgreSQL URL, without its password."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = parts.port or 5432
        user = f"{unquote(parts.username)}@" if parts.username else ""
    except ValueError:
        return "(an unreadable URL)"
    shown = f"[{host}]" if ":" in host else host
    return f"{user}{shown}:{port}{unquote(parts.path) or '/'}"
