"""Opening connections: standalone ones (LISTEN, migrations, tests) and the pool, each with
PGFlow's JSON codecs, their failures translated (``translation.py``).

Behind a transaction-pooling proxy (PgBouncer ``pool_mode = transaction`` before 1.21, or
without ``max_prepared_statements``) each transaction may run on another server connection, so
the pool must not rely on anything that lives in a server session:

- named prepared statements: ``statement_cache=False`` turns asyncpg's statement cache off;
  asyncpg then uses the unnamed statement, parsed again in the same Sync as its execution;
- the JSON codecs below are client-side state; the type lookup they make is one query, fine;
- asyncpg's type introspection turns ``jit`` off around its query with ``set_config(..., false)``
  and back: at worst one server connection keeps ``jit = off``, harmless;
- LISTEN and the migrations' session advisory lock need a session: they go to a direct URL
  (``--listen-database-url``), never through the proxy.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from pgflow.db.translation import LOST_CONNECTION, translate_errors
from pgflow.errors import ConfigurationError, DatabaseUnavailableError


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


async def init_connection(connection: asyncpg.Connection) -> None:
    """Encodes and decodes json/jsonb with orjson on every connection we open."""
    for type_name in ("json", "jsonb"):
        await connection.set_type_codec(
            type_name,
            schema="pg_catalog",
            encoder=dumps,
            decoder=orjson.loads,
            format="text",
        )


async def connect(url: str, **kwargs: Any) -> asyncpg.Connection:
    """One standalone connection with PGFlow's codecs (the listener's, the tests').

    Raises:
        DatabaseUnavailableError: the server cannot be reached.
        ConfigurationError: it refused the connection, or the URL is malformed.
    """
    try:
        connection = await asyncpg.connect(url, **kwargs)
    except Exception as exc:
        error = _refused(exc)
        if error is exc:
            raise
        raise error from exc
    try:
        with translate_errors():
            await init_connection(connection)
    except BaseException:
        connection.terminate()
        raise
    return connection


async def create_pool(
    url: str, *, min_size: int, max_size: int, statement_cache: bool = True
) -> asyncpg.Pool:
    """A pool whose connections have PGFlow's codecs; ``statement_cache=False`` for a URL that
    goes through a transaction-pooling proxy (the module's docstring). The cache saves a round
    trip per query: a single ``get_run`` took ~45% longer without it (docs/worker.md).

    Raises:
        DatabaseUnavailableError: the server cannot be reached.
        ConfigurationError: it refused the connection, or the URL is malformed.
    """
    try:
        return await asyncpg.create_pool(
            url, min_size=min_size, max_size=max_size, init=init_connection,
            reset=_keep_session,
            **({} if statement_cache else {"statement_cache_size": 0}),
        )
    except Exception as exc:
        error = _refused(exc)
        if error is exc:
            raise
        raise error from exc


async def _keep_session(connection: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing to send.

    asyncpg's default sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on
    every release: a round trip and four statements after each query the engine makes, which an
    interactive run makes about eight of. A pooled connection here holds none of that state:
    LISTEN and the migrations' advisory lock use connections of their own, and the engine's
    settings are transaction-local. asyncpg still rolls back a transaction left open and drops
    listeners before it calls this.
    """


def _refused(exc: Exception) -> Exception:
    """What a failed connection attempt raises: the server is away, or it (or the URL) is wrong."""
    if isinstance(exc, LOST_CONNECTION):
        return DatabaseUnavailableError(f"cannot connect to the database: {exc}")
    if isinstance(exc, asyncpg.PostgresError):  # unknown database or role, a wrong password
        return ConfigurationError(f"the database refused the connection: {exc}")
    if isinstance(exc, ValueError):  # asyncpg's DSN parser
        return ConfigurationError(f"invalid database URL: {exc}")
    return exc
