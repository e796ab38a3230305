"""Opening connections: standalone ones (LISTEN, migrations, tests) and the pool, each with
PGFlow's JSON codecs, their failures translated (``translation.py``)."""

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


async def create_pool(url: str, *, min_size: int, max_size: int) -> asyncpg.Pool:
    """A pool whose connections have PGFlow's codecs.

    Raises:
        DatabaseUnavailableError: the server cannot be reached.
        ConfigurationError: it refused the connection, or the URL is malformed.
    """
    try:
        return await asyncpg.create_pool(
            url, min_size=min_size, max_size=max_size, init=init_connection
        )
    except Exception as exc:
        error = _refused(exc)
        if error is exc:
            raise
        raise error from exc


def _refused(exc: Exception) -> Exception:
    """What a failed connection attempt raises: the server is away, or it (or the URL) is wrong."""
    if isinstance(exc, LOST_CONNECTION):
        return DatabaseUnavailableError(f"cannot connect to the database: {exc}")
    if isinstance(exc, asyncpg.PostgresError):  # unknown database or role, a wrong password
        return ConfigurationError(f"the database refused the connection: {exc}")
    if isinstance(exc, ValueError):  # asyncpg's DSN parser
        return ConfigurationError(f"invalid database URL: {exc}")
    return exc
