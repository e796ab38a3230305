"""The client's I/O shell: one LISTEN connection for every run it follows, and the log reads.

- ``pgflow.db.listen.Listener`` LISTENs on ``pgflow_events`` and queues each payload, and
  ``RESYNC`` after each (re)connect.
- ``Feed.consume`` takes that queue in order: ``pgflow.db.notifications.parse_notification``
  decodes a payload (the gateway's decoder: one contract, one parser), ``Following.route``
  hands inline events to their followers and says which runs must be read from the log (a gap,
  or events sent by reference).
- ``Feed.read_loop`` batches those reads: one ``get_runs_events`` query for many runs.

Nothing is lost or repeated between the first read and the live feed: a follower is registered
before its first read, so whatever commits after that read's snapshot is notified to it, and it
drops by ``seq`` what it has already taken. After a reconnect (``RESYNC``) every followed run is
read again from where its followers are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import orjson

from pgflow.client._follow import Event, Follower, Following
from pgflow.db.backoff import backoff_delay
from pgflow.db.listen import RESYNC, Listener
from pgflow.db.notifications import MAX_SEQ, NOTIFY_CHANNEL, NotificationError, parse_notification
from pgflow.db.read_queue import ReadQueue
from pgflow.db.store import Store
from pgflow.errors import DatabaseUnavailableError, PGFlowError

logger = logging.getLogger(__name__)

READ_PAGE = 500  # events per run per log read
READ_BATCH = 200  # runs per log read query
READ_RETRY_FIRST, READ_RETRY_LONGEST = 0.1, 5.0  # seconds between failed log reads


class ClientClosedError(PGFlowError):
    """The client is closed."""


class Feed:
    """Routes ``pgflow_events`` notifications and log reads to the client's followers."""

    def __init__(self, store: Store, listen_url: str, *, application_name: str,
                 page: int = READ_PAGE, batch: int = READ_BATCH) -> None:
        self.store = store
        self.following = Following()
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.listener = Listener(listen_url, NOTIFY_CHANNEL, self.queue,
                                 application_name=application_name)
        self.page = page
        self.batch = batch
        self.log_reads = 0  # queries made to the log (tests, diagnostics)
        # runs to read, batched; a failed read is tried again, backing off
        self._reads = ReadQueue(
            self.read, batch=batch, retryable=PGFlowError,
            retry_delay=lambda failures: backoff_delay(failures, first=READ_RETRY_FIRST,
                                                       longest=READ_RETRY_LONGEST))
        self._tasks: list[asyncio.Task[None]] = []
        self._closed: BaseException | None = None

    async def start(self, *, timeout: float) -> None:
        """Starts listening; returns once the LISTEN connection is up.

        Raises:
            DatabaseUnavailableError: it was not up within ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        for name, coroutine in (("pgflow-client-listener", self.listener.run()),
                                ("pgflow-client-consumer", self.consume()),
                                ("pgflow-client-reader", self.read_loop())):
            task = loop.create_task(coroutine, name=name)
            task.add_done_callback(self._task_done)
            self._tasks.append(task)
        listening = self._tasks[0]
        connected = loop.create_task(self.listener.ever_connected.wait())
        try:
            await asyncio.wait({connected, listening}, timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            connected.cancel()
        if not self.listener.ever_connected.is_set():
            refused = None if not listening.done() or listening.cancelled() else (
                listening.exception())
            await self.stop()
            if refused is not None:  # a refused login (ConfigurationError), a bad URL
                raise refused
            raise DatabaseUnavailableError(
                f"cannot LISTEN on {NOTIFY_CHANNEL} within {timeout} s")

    async def stop(self) -> None:
        """Stops listening and reading; every follower still waiting fails. Idempotent."""
        if self._closed is None:
            self._closed = ClientClosedError()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self.following.fail_all(self._closed)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is None:  # pragma: no cover - the loops never return
            error = RuntimeError(f"{task.get_name()} stopped")
        logger.error("%s failed: %r", task.get_name(), error,
                     extra={"action": "client_task_failed"}, exc_info=error)
        # A follower must not wait for what can no longer come.
        closed = ClientClosedError(f"the client stopped: {task.get_name()} failed: {error!r}")
        closed.__cause__ = error
        self._closed = closed
        self.following.fail_all(closed)

    # -- followers ------------------------------------------------------------------------------

    def follow(self, run_id: str, since: int, *, keep: bool) -> Follower:
        if self._closed is not None:
            raise self._closed
        follower = Follower(run_id, since, keep=keep)
        self.following.add(follower)
        return follower

    def unfollow(self, follower: Follower) -> None:
        self.following.remove(follower)

    def take_read(self, run_id: str, since: int, rows: Sequence[Event], *, complete: bool) -> None:
        """Gives the run's followers events read from the log with ``since < seq``; reads on
        when some follower is still behind what the log holds."""
        behind = self.following.take(run_id, rows, complete=complete)
        if not complete or (behind and self._read_since(run_id) < since):
            self.request_read(run_id)

    def _read_since(self, run_id: str) -> int:
        since = self.following.read_since(run_id)
        return since if since is not None else MAX_SEQ

    # -- the consumer ---------------------------------------------------------------------------

    async def consume(self) -> None:
        """Handles notifications in arrival order, forever."""
        queue = self.queue
        while True:
            self.handle(await queue.get())

    def handle(self, payload: str | None) -> None:
        if payload is RESYNC:
            for run_id in self.following.runs():
                self.request_read(run_id)
            return
        try:
            notification = parse_notification(payload)
        except NotificationError as exc:
            logger.error("unreadable notification, re-reading every followed run: %s", exc,
                         extra={"action": "notification_invalid"})
            for run_id in self.following.runs():
                self.request_read(run_id)
            return
        for run_id in self.following.route(notification):
            self.request_read(run_id)

    # -- the log reader -------------------------------------------------------------------------

    def request_read(self, run_id: str) -> None:
        self._reads.request(run_id)

    async def read_loop(self) -> None:
        """Serves ``request_read``: batched log reads; a failed read is tried again."""
        await self._reads.run()

    async def read(self, runs: Sequence[str]) -> None:
        reads: list[tuple[str, int, int | None]] = []
        for run_id in runs:
            since = self.following.read_since(run_id)
            if since is not None:
                reads.append((run_id, since, min(since + self.page, MAX_SEQ)))
        if not reads:
            return
        found = await self.store.get_runs_events_json(reads)
        self.log_reads += 1
        for run_id, since, _until in reads:
            rows = [orjson.loads(text) for _seq, text in found.pop(run_id, ())]
            self.take_read(run_id, since, rows, complete=len(rows) < self.page)
