"""What wakes the claim loop: a NOTIFY on ``pgflow_tasks`` naming one of the worker's flows,
a (re)connected LISTEN (hints sent meanwhile are lost), a retry whose backoff ends (the engine
sends no NOTIFY for that), a freed slot, or else the poll interval.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection

from pgflow.db.backoff import Retry, jitter
from pgflow.db.listen import RESYNC, Listener

TASKS_CHANNEL = "pgflow_tasks"
CANCELS_CHANNEL = "pgflow_cancels"  # cancel_run's: the run_id whose handlers should stop
LISTEN_HEALTH_INTERVAL = 10.0  # seconds of silence before the listener pings its connection
LISTEN_HEALTH_TIMEOUT = 20.0  # seconds the ping may take
RETRY_WAKE_MARGIN = 0.01  # seconds after a retry's backoff before claiming it
POLL_JITTER = 0.1  # fraction: workers started together do not poll together


class Wakeup:
    """A flag the claim loop waits on, and the tasks that raise it."""

    def __init__(self, flow_slugs: Collection[str]) -> None:
        self._slugs = frozenset(flow_slugs)
        self._event = asyncio.Event()

    def serve(self, flow_keys: Collection[str]) -> None:
        """The flow versions' keys whose hints wake the loop (``definitions.flow_key``)."""
        self._slugs = frozenset(flow_keys)

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        """Before a claim: a hint that arrives during the claim is kept for the next one."""
        self._event.clear()

    async def wait(self, poll_interval: float) -> None:
        """Returns when woken, or after about ``poll_interval`` seconds."""
        timeout = poll_interval * jitter.uniform(1 - POLL_JITTER, 1 + POLL_JITTER)
        try:
            async with asyncio.timeout(timeout):
                await self._event.wait()
        except TimeoutError:
            pass

    def after(self, delay: float) -> None:
        """Wakes up once a retry's ``delay`` seconds of backoff are over."""
        asyncio.get_running_loop().call_later(delay + RETRY_WAKE_MARGIN, self._event.set)

    async def listen(self, database_url: str, application_name: str, retry: Retry,
                     on_cancel: Callable[[str], None] | None = None) -> None:
        """LISTENs on ``pgflow_tasks`` until cancelled, reconnecting as needed; ``database_url``
        must reach PostgreSQL directly (``--listen-database-url``), not through PgBouncer.
        ``on_cancel`` gets each ``pgflow_cancels`` payload (a run_id), on the same connection."""
        hints: asyncio.Queue[str | None] = asyncio.Queue()
        listener = Listener(
            database_url, TASKS_CHANNEL, hints, application_name=application_name,
            health_interval=LISTEN_HEALTH_INTERVAL, health_timeout=LISTEN_HEALTH_TIMEOUT,
            retry=retry, also={CANCELS_CHANNEL: on_cancel} if on_cancel is not None else None,
        )
        async with asyncio.TaskGroup() as group:
            group.create_task(listener.run(), name="pgflow-worker-listener")
            while True:
                hint = await hints.get()
                # RESYNC: tasks queued while we were not listening sent no hint to us
                if hint is RESYNC or hint in self._slugs:
                    self._event.set()
