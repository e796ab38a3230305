"""Applies the engine's SQL migrations, each once, in order, under an advisory lock.

Migrations are the files ``sql/migrations/NNNN_description.sql``. Each runs in its own
transaction and is recorded in ``pgflow.schema_migrations``; a session advisory lock makes two
processes that migrate at once take turns, the second finding nothing left to do. A database
whose record names other migrations than these files (a pre-release layout) is refused, except
one that applied every pre-release migration: it has the baseline's schema and is recorded so.
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

from pgflow.db.translation import LOST_CONNECTION, translate_errors
from pgflow.errors import ConfigurationError, DatabaseUnavailableError

logger = logging.getLogger(__name__)

MIGRATION_LOCK_KEY = 0x7067666C6F77  # "pgflow"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# Folded into 0001_initial before the first release: a database that applied all of them has
# exactly the baseline's schema (pg_dump-compared when they were folded).
PRE_RELEASE_MIGRATIONS = (
    "0001_tables", "0002_events", "0003_define_flow", "0004_runs",
    "0005_report_steps", "0006_cheaper_hot_path", "0007_field_hardening",
)
BASELINE = "0001_initial"
# From the catalog, which every role may read: no privilege on the schema needed.
_RECORD_EXISTS = """
  select exists (
    select from pg_catalog.pg_class as c
    join pg_catalog.pg_namespace as n on n.oid = c.relnamespace
    where n.nspname = 'pgflow' and c.relname = 'schema_migrations'
  )
"""


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
    # Notices (a role _grant_roles found missing) are the migrating operator's to read.
    connection.add_log_listener(_log_notice)
    try:
        # No DDL when the record exists: a worker's or gateway's role (docs/reference/
        # sql-api.md#roles-and-grants) migrates on start and may only read it.
        if not await connection.fetchval(_RECORD_EXISTS):
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
        recorded = {
            r["version"]: r["name"]
            for r in await connection.fetch("select version, name from pgflow.schema_migrations")
        }
        if sorted(recorded.values()) == list(PRE_RELEASE_MIGRATIONS):
            recorded = await _record_as_baseline(connection)
        migrations = load_migrations()
        _check_history(recorded, migrations)
        for migration in migrations:
            if migration.version in recorded:
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
    except asyncpg.InsufficientPrivilegeError as exc:
        raise _privilege_error(connection, exc) from exc
    finally:
        connection.remove_log_listener(_log_notice)
        await connection.execute("select pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return applied_now


def _privilege_error(
    connection: asyncpg.Connection, exc: asyncpg.InsufficientPrivilegeError
) -> ConfigurationError:
    """A privilege the role lacks, as what to do about it: a worker's or gateway's role that
    meets a pending migration, or one not granted its group role."""
    user = connection.get_settings().session_authorization or "this role"
    return ConfigurationError(
        f"cannot migrate as {user}: {exc.message}. Run `pgflow migrate` as the owner of the "
        "schema pgflow; a worker's or gateway's role needs pgflow_worker or pgflow_gateway "
        "(docs/reference/sql-api.md#roles-and-grants)"
    )


def _log_notice(connection: asyncpg.Connection, message: asyncpg.PostgresLogMessage) -> None:
    # Ours start with "pgflow:"; PostgreSQL's own ("... already exists, skipping") are noise.
    if not message.message.startswith("pgflow:"):
        return
    hint = f" ({message.hint})" if getattr(message, "hint", None) else ""
    logger.info("%s%s", message.message, hint, extra={"action": "migrate"})


async def _record_as_baseline(connection: asyncpg.Connection) -> dict[str, str]:
    async with connection.transaction():
        await connection.execute("delete from pgflow.schema_migrations")
        await connection.execute(
            "insert into pgflow.schema_migrations (version, name) values ($1, $2)",
            BASELINE[:4],
            BASELINE,
        )
    logger.info(
        "recorded the pre-release migrations 0001-0007 as %s", BASELINE,
        extra={"action": "migrate"},
    )
    return {BASELINE[:4]: BASELINE}


def _check_history(recorded: dict[str, str], migrations: list[Migration]) -> None:
    """Refuses a database whose recorded migrations are not these files': applying the rest
    would build on a schema they do not describe."""
    for migration in migrations:
        name = recorded.get(migration.version)
        if name is not None and name != migration.name:
            raise ConfigurationError(
                f"the database recorded migration {name} where this pgflow has "
                f"{migration.name}, so its schema is not one these migrations build on (a "
                "pre-release pgflow's 0001-0007 were folded into 0001_initial); recreate the "
                "database (drop it, or delete the embedded server's data folder) and migrate"
            )


async def migrate_url(url: str) -> list[str]:
    """Connects to ``url`` and migrates.

    Raises:
        DatabaseUnavailableError: the server cannot be reached (a closed port, no route).
        ConfigurationError: it refused the connection (unknown database or role, password) or
            the URL is malformed.
        DatabaseError: a migration failed (the database is left as its last migration left it).
    """
    connection = await connect_or_explain(url)
    with translate_errors():
        try:
            return await migrate(connection)
        finally:
            await connection.close()


async def connect_or_explain(url: str) -> asyncpg.Connection:
    """``asyncpg.connect(url)``, its failures as one-line errors that name the server (never
    the password): a start-up with a wrong URL says what is wrong instead of a traceback."""
    try:
        return await asyncpg.connect(url)
    except (*LOST_CONNECTION, asyncpg.PostgresConnectionError) as exc:
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
