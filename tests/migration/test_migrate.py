from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import asyncpg
import pytest

from pgflow.db.migrate import PRE_RELEASE_MIGRATIONS, load_migrations, migrate, sql_dir
from pgflow.errors import ConfigurationError
from tests.conftest import Server
from tests.migration._helpers import fresh_database

REPO = Path(__file__).resolve().parents[2]


async def test_migrate_applies_each_migration_once_and_records_it(pg_server: Server) -> None:
    url = await fresh_database(pg_server, "migrate_once")
    conn = await asyncpg.connect(url)
    try:
        applied = await migrate(conn)
        assert applied == [m.name for m in load_migrations()]
        assert await migrate(conn) == []
        versions = [
            r[0]
            for r in await conn.fetch("select version from pgflow.schema_migrations order by 1")
        ]
        assert versions == [m.version for m in load_migrations()]
    finally:
        await conn.close()


async def test_processes_migrating_at_once_take_turns(pg_server: Server) -> None:
    url = await fresh_database(pg_server, "migrate_race")
    conns = [await asyncpg.connect(url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        assert sorted(len(r) for r in results) == [0, 0, 0, len(load_migrations())]
    finally:
        for c in conns:
            await c.close()


async def test_the_schema_needs_no_extension(pg_server: Server) -> None:
    url = await fresh_database(pg_server, "migrate_ext")
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        assert [r[0] for r in await conn.fetch("select extname from pg_extension")] == ["plpgsql"]
    finally:
        await conn.close()


def pgflow_migrate(*args: str, env: dict[str, str] | None = None) -> str:
    """Runs ``pgflow migrate`` as a user would; returns what it printed."""
    result = subprocess.run(
        [sys.executable, "-m", "pgflow", "migrate", *args],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )
    return result.stdout


def test_migration_files_are_numbered_without_gaps() -> None:
    versions = [int(m.version) for m in load_migrations()]
    assert versions == list(range(1, len(versions) + 1))


def test_pgflow_migrate_works_against_a_database_url(pg_server: Server) -> None:
    url = asyncio.run(fresh_database(pg_server, "migrate_cli"))
    env = {**os.environ, "DATABASE_URL": url}
    first = pgflow_migrate(env=env)
    assert f"applied {len(load_migrations())} migration(s)" in first
    again = pgflow_migrate("--database-url", url)
    assert "applied 0 migration(s)" in again


def test_pgflow_migrate_starts_and_stops_an_embedded_server(open_tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    data_dir = open_tmp_path / "data"
    result = pgflow_migrate("--data-dir", str(data_dir), env=env)
    assert f"applied {len(load_migrations())} migration(s)" in result
    assert (data_dir / "pgdata" / "PG_VERSION").read_text().strip() == "18"
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()  # stopped cleanly
    again = pgflow_migrate("--data-dir", str(data_dir), env=env)
    assert "applied 0 migration(s)" in again


def test_the_built_wheel_ships_the_sql(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for migration in load_migrations():
        assert f"pgflow/sql/migrations/{migration.name}.sql" in names
    for path in (sql_dir() / "schema").glob("*.sql"):
        assert f"pgflow/sql/schema/{path.name}" in names


async def record_history(url: str, names: tuple[str, ...]) -> None:
    """Rewrites a migrated database's record as if ``names`` had been applied."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("delete from pgflow.schema_migrations")
        await conn.executemany(
            "insert into pgflow.schema_migrations (version, name) values ($1, $2)",
            [(name[:4], name) for name in names],
        )
    finally:
        await conn.close()


async def test_a_database_of_every_pre_release_migration_is_recorded_as_the_baseline(
    pg_server: Server,
) -> None:
    # 0001-0007 built exactly the baseline's schema (compared with pg_dump when they were
    # folded): such a database holds 0001_initial's objects and the seven old names.
    url = await fresh_database(pg_server, "migrate_pre_release")
    conn = await asyncpg.connect(url)
    try:
        baseline, *later = load_migrations()
        await conn.execute(baseline.sql)
        await conn.execute(
            "create table pgflow.schema_migrations (version text primary key,"
            " name text not null, applied_at timestamptz not null default now())")
        await record_history(url, PRE_RELEASE_MIGRATIONS)
        assert await migrate(conn) == [m.name for m in later]
        rows = await conn.fetch("select version, name from pgflow.schema_migrations")
        assert tuple(rows[0]) == ("0001", "0001_initial")
        assert len(rows) == 1 + len(later)
    finally:
        await conn.close()


async def test_a_database_of_some_pre_release_migrations_is_refused(pg_server: Server) -> None:
    url = await fresh_database(pg_server, "migrate_partial")
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        await record_history(url, PRE_RELEASE_MIGRATIONS[:5])
        with pytest.raises(ConfigurationError, match=r"recorded migration 0001_tables .* recreate"):
            await migrate(conn)
        # nothing was rewritten, and the advisory lock was let go
        assert await conn.fetchval("select count(*) from pgflow.schema_migrations") == 5
        held = (
            "select count(*) from pg_locks"
            " where locktype = 'advisory' and pid = pg_backend_pid()"
        )
        assert await conn.fetchval(held) == 0
    finally:
        await conn.close()


def test_pgflow_migrate_says_to_recreate_a_pre_release_database(pg_server: Server) -> None:
    url = asyncio.run(fresh_database(pg_server, "migrate_partial_cli"))
    pgflow_migrate("--database-url", url)
    asyncio.run(record_history(url, PRE_RELEASE_MIGRATIONS[:3]))
    result = subprocess.run(
        [sys.executable, "-m", "pgflow", "migrate", "--database-url", url],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("pgflow migrate: the database recorded migration 0001_tables")
    assert "recreate the database" in result.stderr
