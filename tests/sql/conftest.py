from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from pgflow.db.connection import connect


@pytest.fixture
async def listen_conn(db_url: str) -> AsyncIterator[Any]:
    """A second connection, for LISTEN (a connection's own NOTIFYs reach it only after commit)."""
    connection = await connect(db_url)
    yield connection
    await connection.close()
