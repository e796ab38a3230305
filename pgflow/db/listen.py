"""The LISTEN side of the database: one dedicated connection per listener, kept alive.

``Listener`` owns a standalone asyncpg connection (never a pooled one: a pool's reset sends
``UNLISTEN *``) that LISTENs on one channel. Its callback only does ``queue.put_nowait(payload)``.
It probes the link with ``select 1`` after a quiet period, and when the link is lost it
reconnects with capped, jittered backoff, LISTENs again, then puts ``RESYNC`` on the queue:
notifications sent while it was away are lost, the tables are not, so the consumer re-reads.

The gateway's relay LISTENs on ``pgflow_events`` with it, each worker on ``pgflow_tasks``.
Its URL must reach PostgreSQL directly: through PgBouncer in transaction mode, LISTEN would
stay on a server connection the pool lends to others, and notifications never come back
(``--listen-database-url``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

import asyncpg

from pgflow.db.backoff import Retry, backoff_delay
from pgflow.db.connection import connect
from pgflow.db.translation import translate_errors
from pgflow.errors import DatabaseError, DatabaseUnavailableError, PGFlowError

logger = logging.getLogger(__name__)

RESYNC = None  # queue marker: (re)connected, every followed run must be read from the log
CONNECT_TIMEOUT = 10.0  # seconds
HEALTH_INTERVAL = 10.0  # seconds without a notification before probing with `select 1`
HEALTH_TIMEOUT = 5.0  # seconds the probe may take
RECONNECT_FIRST_DELAY = 0.2  # seconds: the first wait is 0.1 to 0.2 s
RECONNECT_MAX_DELAY = 5.0  # seconds


class _EachFailureLogged:
    """The listener's own account of its failures: one warning each."""

    def __init__(self) -> None:
        self.failures = 0

    def failed(self, exc: BaseException) -> float:
        self.failures += 1
        logger.warning("listener connection failed: %s", exc, extra={"action": "listener_error"})
        return backoff_delay(self.failures, first=RECONNECT_FIRST_DELAY,
                             longest=RECONNECT_MAX_DELAY)

    def succeeded(self) -> None:
        self.failures = 0


class Listener:
    """One LISTEN connection on ``channel``, kept alive for as long as ``run()`` runs.

    ``retry`` accounts for failed connection attempts and gives the wait before the next (the
    worker's logs an outage at a bounded rate); by default each failure is a warning.
    """

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
        retry: Retry | None = None,
        also: Mapping[str, Callable[[str], None]] | None = None,
    ) -> None:
        self.url = url
        self.channel = channel
        # more channels on the same connection, each payload handed to its callback (which
        # must not raise or block); nothing of theirs goes into ``queue``
        self.also = dict(also or {})
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
        self._retry = retry or _EachFailureLogged()

    def _on_notification(
        self, connection: object, pid: int, channel: str, payload: str
    ) -> None:
        # asyncpg calls this with call_soon, fire-and-forget: nothing here may raise or block.
        self.queue.put_nowait(payload)
        self._received += 1

    def _forward_to(self, callback: Callable[[str], None]) -> Callable[..., None]:
        def forward(connection: object, pid: int, channel: str, payload: str) -> None:
            self._received += 1
            callback(payload)
        return forward

    async def run(self) -> None:
        """Listens until cancelled, reconnecting as often as needed."""
        while True:
            try:
                await self._session()
            except (DatabaseUnavailableError, DatabaseError) as exc:
                delay = self._retry.failed(exc)
            else:
                self.reconnects += 1
                # as after a first failure: a server that cut every client is not stormed
                delay = backoff_delay(1, first=RECONNECT_FIRST_DELAY,
                                      longest=RECONNECT_MAX_DELAY)
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        """One connection's life: connect, LISTEN, watch; returns once an established LISTEN
        connection is lost.

        Raises:
            DatabaseUnavailableError, DatabaseError: it could not connect or LISTEN.
        """
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
        try:
            with translate_errors():
                await connection.add_listener(self.channel, self._on_notification)
                for channel, callback in self.also.items():
                    await connection.add_listener(channel, self._forward_to(callback))
            self._retry.succeeded()
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
            except PGFlowError:  # whatever the reason, the link cannot be trusted
                return
