"""sql/schema/ and sql/migrations/ describe the same database.

One database is built by applying every migration (``pgflow.db.migrate``), one by loading
sql/schema/*.sql in name order; ``pg_dump --schema-only`` of both must be equal. pg_dump prints
function bodies verbatim, so a body that differs by a character fails too (as procrastinate's
tests/migration and pgflow's atlas-verify-schemas-synced check).
"""

from __future__ import annotations

import asyncio
import difflib
import re
import shutil
from pathlib import Path

import asyncpg
import pytest

from pgflow.db.migrate import migrate, sql_dir
from tests.conftest import Server
from tests.migration._helpers import fresh_database

SCHEMA = sql_dir() / "schema"
# 0010_schema, 0030_table_flows, 0100_function_run_flow, 0110_function__event, 0900_grants ...
_SCHEMA_FILE = re.compile(
    r"^\d{4}_(schema|types|grants|(table|function|trigger|view)_[a-z0-9_]+)\.sql$"
)
# pg_dump 17.6 / 18.0 and later fence a dump with \restrict KEY ... \unrestrict KEY, the key
# random per run.
_RESTRICT = re.compile(r"^\\(un)?restrict \S+$", re.M)


def pg_dump_binary(pg_server: Server) -> Path:
    """The pg_dump next to the session's server (never older than the server, as it must be)."""
    if pg_server.cluster is not None:
        return pg_server.cluster.bin_dir / "pg_dump"
    found = shutil.which("pg_dump")
    if found is None:
        # No silent pass: the comparison is the only check that the schema and migrations agree.
        pytest.fail("DATABASE_URL is set and no pg_dump is on PATH: install the PostgreSQL "
                    "client of the server's version (or newer) to compare schemas")
    return Path(found)


async def schema_dump(pg_server: Server, url: str) -> str:
    process = await asyncio.create_subprocess_exec(
        str(pg_dump_binary(pg_server)), "--schema-only", "--no-owner",
        # migrate's own bookkeeping, created before any migration runs
        "--exclude-table=pgflow.schema_migrations",
        url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return _RESTRICT.sub("", out.decode())


async def built_from_migrations(pg_server: Server, name: str) -> str:
    url = await fresh_database(pg_server, name)
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return await schema_dump(pg_server, url)


def schema_files(directory: Path) -> list[str]:
    """The schema's files, in load order."""
    return [path.read_text() for path in sorted(directory.glob("*.sql"))]


async def built_from_schema(pg_server: Server, name: str, directory: Path = SCHEMA) -> str:
    files = schema_files(directory)
    url = await fresh_database(pg_server, name)
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            for sql in files:
                await conn.execute(sql)
    finally:
        await conn.close()
    return await schema_dump(pg_server, url)


def assert_same_schema(from_migrations: str, from_schema: str) -> None:
    diff = "\n".join(difflib.unified_diff(
        from_migrations.splitlines(), from_schema.splitlines(),
        "built from sql/migrations", "built from sql/schema", lineterm="",
    ))
    assert not diff, (
        "sql/schema/ and sql/migrations/ disagree: edit the schema file and add a migration "
        f"(sql/README.md)\n{diff}"
    )


def test_schema_files_are_named_for_load_order() -> None:
    names = sorted(p.name for p in SCHEMA.glob("*.sql"))
    assert names, SCHEMA
    assert [n for n in names if not _SCHEMA_FILE.match(n)] == []
    assert names[0] == "0010_schema.sql"


async def test_a_database_built_from_the_migrations_equals_one_built_from_the_schema(
    pg_server: Server,
) -> None:
    from_migrations = await built_from_migrations(pg_server, "schema_sync_migrations")
    from_schema = await built_from_schema(pg_server, "schema_sync_schema")
    assert "CREATE FUNCTION pgflow.claim_tasks(" in from_migrations  # a dump, not an empty file
    assert_same_schema(from_migrations, from_schema)


@pytest.mark.parametrize(
    ("file", "old", "new"),
    [
        # a constraint
        ("0041_table_step_states.sql", "remaining_deps >= 0", "remaining_deps >= 1"),
        # a function body, by one space
        ("0110_function__event.sql", "pgflow._note_events(", "pgflow._note_events ("),
    ],
)
async def test_the_comparison_sees_a_schema_file_that_disagrees(
    pg_server: Server, tmp_path: Path, file: str, old: str, new: str
) -> None:
    edited = tmp_path / "schema"
    shutil.copytree(SCHEMA, edited)
    text = (edited / file).read_text()
    assert old in text
    (edited / file).write_text(text.replace(old, new, 1))
    from_migrations = await built_from_migrations(pg_server, "schema_sync_migrations")
    from_schema = await built_from_schema(pg_server, "schema_sync_edited", edited)
    with pytest.raises(AssertionError, match="disagree"):
        assert_same_schema(from_migrations, from_schema)
