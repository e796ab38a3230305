"""The LISTEN side of the database: one dedicated connection per listener, kept alive.

``Listener`` owns a standalone asyncpg connection (never a pooled one: a pool's reset sends
``UNLISTEN *``) that LISTENs on one channel. Its callback only does ``queue.put_nowait(payload)``.
It probes the link with ``select 1`` after a quiet period, and when the link is lost it
reconnects with capped, jittered backoff, LISTENs again, then puts ``RESYNC`` on the queue:
notifications sent while it was away are lost, the tables are not, so the consumer re-reads.
"""

from __future__ import annotations

import asyncio
import logging
import random

import asyncpg

from pgflow.db.store import connect, translate_errors
from pgflow.errors import DatabaseUnavailableError

logger = logging.getLogger(__name__)

RESYNC = None  # queue marker: (re)connected, every followed run must be read from the log
CONNECT_TIMEOUT = 10.0  # seconds
HEALTH_INTERVAL = 10.0  # seconds without a notification before probing with `select 1`
HEALTH_TIMEOUT = 5.0  # seconds the probe may take
RECONNECT_MIN_DELAY = 0.1  # seconds
RECONNECT_MAX_DELAY = 5.0  # seconds


def backoff_delay(attempt: int, low: float = RECONNECT_MIN_DELAY,
                  high: float = RECONNECT_MAX_DELAY) -> float:
    """Full jitter between ``low`` and a cap that doubles per attempt up to ``high``."""
    cap = min(high, low * 2 ** min(attempt, 30))
    return random.uniform(low, cap)


class Listener:
    """One LISTEN connection on ``channel``, kept alive for as long as ``run()`` runs."""

    def __init__(
        self,
        url: str,
        channel: str,
        queue: asyncio.Queue[str | None],
        *,
        application_name: str,
        health_interval: float = HEALTH_INTERVAL,
        health_timeout: float = HEALTH_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.url = url
        self.channel = channel
        self.queue = queue
        self.application_name = application_name
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self.connect_timeout = connect_timeout
        self.connected = False
        self.ever_connected = asyncio.Event()
        self.reconnects = 0
        self.backend_pid: int | None = None
        self._received = 0

    def _on_notification(
        self, connection: object, pid: int, channel: str, payload: str
    ) -> None:
        # asyncpg calls this with call_soon, fire-and-forget: nothing here may raise or block.
        self.queue.put_nowait(payload)
        self._received += 1

    async def run(self) -> None:
        """Listens until cancelled, reconnecting as often as needed."""
        attempt = 0
        while True:
            was_connected = False
            try:
                was_connected = await self._session()
            except DatabaseUnavailableError as exc:
                logger.warning("listener connection failed: %s", exc,
                               extra={"action": "listener_error"})
            if was_connected:
                attempt = 0
                self.reconnects += 1
            attempt += 1
            await asyncio.sleep(backoff_delay(attempt))

    async def _session(self) -> bool:
        """One connection's life: connect, LISTEN, watch. Returns whether it got to LISTEN."""
        connection: asyncpg.Connection = await connect(
            self.url, timeout=self.connect_timeout,
            server_settings={"application_name": self.application_name},
        )
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[None] = loop.create_future()

        def on_lost(_connection: object) -> None:
            if not lost.done():
                lost.set_result(None)

        connection.add_termination_listener(on_lost)
        listening = False
        try:
            with translate_errors():
                await connection.add_listener(self.channel, self._on_notification)
            listening = True
            self.backend_pid = connection.get_server_pid()
            self.connected = True
            self.ever_connected.set()
            # After LISTEN, so that a log read it triggers sees everything the lost
            # notifications announced.
            self.queue.put_nowait(RESYNC)
            logger.info("listening on %s (backend %s)", self.channel, self.backend_pid,
                        extra={"action": "listener_connected"})
            await self._watch(connection, lost)
            logger.warning("listener connection lost", extra={"action": "listener_lost"})
        finally:
            self.connected = False
            connection.terminate()
        return listening

    async def _watch(self, connection: asyncpg.Connection, lost: asyncio.Future[None]) -> None:
        """Returns when the connection is lost or fails its health probe."""
        seen = self._received
        while True:
            await asyncio.wait({lost}, timeout=self.health_interval)
            if lost.done():
                return
            if self._received != seen:
                seen = self._received
                continue
            try:
                with translate_errors():
                    async with asyncio.timeout(self.health_timeout):
                        await connection.fetchval("select 1")
            except TimeoutError:
                logger.warning("listener health probe timed out",
                               extra={"action": "listener_probe_timeout"})
                return
            except DatabaseUnavailableError:
                return
