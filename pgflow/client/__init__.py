"""The Python client: start runs, await their outcome, follow their events and steer them, over
SQL and LISTEN, without a gateway (docs/reference/python-client.md).

    _client.py  Client and RunHandle: the API
    _feed.py    the I/O: one LISTEN connection for every followed run, batched log reads
    _follow.py  the pure core: followers, and events routed to them in seq order, each once
"""

from __future__ import annotations

from pgflow.client._client import Client, RunHandle
from pgflow.client._feed import ClientClosedError

__all__ = ["Client", "ClientClosedError", "RunHandle"]
