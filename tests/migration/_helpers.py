from __future__ import annotations

import asyncpg

from tests.conftest import Server


async def fresh_database(pg_server: Server, name: str) -> str:
    """An empty database ``name`` (dropped first if a previous run left it); its URL."""
    admin = await asyncpg.connect(pg_server.url)
    try:
        await admin.execute(f"drop database if exists {name} with (force)")
        await admin.execute(f"create database {name}")
    finally:
        await admin.close()
    return pg_server.url_for(name)
