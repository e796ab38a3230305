"""The LISTEN side: one dedicated connection, one ordered consumer, one log reader.

- ``Listener`` owns a standalone asyncpg connection (never a pooled one: a pool's reset sends
  ``UNLISTEN *``) that LISTENs on ``pgflow_events``. Its callback only does
  ``queue.put_nowait(payload)``. It probes the link with ``select 1`` after a quiet period, and
  when the link is lost it reconnects with capped, jittered backoff, LISTENs again, then puts
  ``RESYNC`` on the queue: notifications sent while it was away are lost, the log is not.
- ``Relay`` consumes that queue in order (the single consumer): inline events are serialised once
  and handed to the fan-out; references and gaps become log reads. Its reader batches the reads:
  one query for many runs, one read per run whatever its number of subscribers. A read that
  cannot move a subscription on (a hole in the log, a run gone) is retried with backoff
  (``STALL_RETRY_DELAYS``), then the subscription ends with an error frame, ``gap`` or
  ``not_found``: nothing re-reads in a loop.
- ``FrameCache`` shares the frame of a large event read from the log between the sockets that
  replay it, for as long as one of them holds it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
import weakref
from collections.abc import Sequence
from typing import cast

import asyncpg

from gateway.errors import DatabaseUnavailableError
from gateway.fanout import Fanout, Item, Subscription
from gateway.metrics import Metrics
from gateway.protocol import (
    MAX_SEQ,
    NOTIFY_CHANNEL,
    EventsNotification,
    NotificationError,
    error_frame,
    event_frame,
    event_frame_from_json,
    parse_notification,
)
from gateway.store import Store, connect, translate_errors
from gateway.wire import TextFrame

logger = logging.getLogger(__name__)

RESYNC = None  # queue marker: (re)connected, every followed run must be read from the log
APPLICATION_NAME = "pgflow-gateway-listener"
CONNECT_TIMEOUT = 10.0  # seconds
HEALTH_INTERVAL = 10.0  # seconds without a notification before probing with `select 1`
HEALTH_TIMEOUT = 5.0  # seconds the probe may take
RECONNECT_MIN_DELAY = 0.1  # seconds
RECONNECT_MAX_DELAY = 5.0  # seconds
READ_PAGE = 500  # events per run per log read
READ_BATCH = 200  # runs per log read query
READ_RETRY_DELAY = 0.5  # seconds, after a failed log read
# Seconds before each re-read of a run whose log could not move a subscription on; one more
# such read and the subscription ends (``gap`` / ``not_found``): ~1.3 s and 4 reads in all.
STALL_RETRY_DELAYS = (0.05, 0.25, 1.0)
SHARED_FRAME_BYTES = 64 * 1024  # log events from this size share one frame between sockets


def backoff_delay(attempt: int, low: float = RECONNECT_MIN_DELAY,
                  high: float = RECONNECT_MAX_DELAY) -> float:
    """Full jitter between ``low`` and a cap that doubles per attempt up to ``high``."""
    cap = min(high, low * 2 ** min(attempt, 30))
    return random.uniform(low, cap)


class Listener:
    """The gateway's one LISTEN connection, kept alive for as long as ``run()`` runs."""

    def __init__(
        self,
        url: str,
        queue: asyncio.Queue[str | None],
        *,
        health_interval: float = HEALTH_INTERVAL,
        health_timeout: float = HEALTH_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.url = url
        self.queue = queue
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
            server_settings={"application_name": APPLICATION_NAME},
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
                await connection.add_listener(NOTIFY_CHANNEL, self._on_notification)
            listening = True
            self.backend_pid = connection.get_server_pid()
            self.connected = True
            self.ever_connected.set()
            # After LISTEN, so that a log read it triggers sees everything the lost
            # notifications announced.
            self.queue.put_nowait(RESYNC)
            logger.info("listening on %s (backend %s)", NOTIFY_CHANNEL, self.backend_pid,
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


class Relay:
    """Routes the listener's notifications into the fan-out, and reads the log when needed."""

    def __init__(
        self,
        fanout: Fanout,
        store: Store,
        metrics: Metrics,
        queue: asyncio.Queue[str | None],
        *,
        page: int = READ_PAGE,
        batch: int = READ_BATCH,
    ) -> None:
        self.fanout = fanout
        self.store = store
        self.metrics = metrics
        self.queue = queue
        self.page = page
        self.batch = batch
        self._pending: dict[str, None] = {}  # runs to read, in request order
        self._wakeup = asyncio.Event()
        self._retries: dict[str, asyncio.TimerHandle] = {}  # stalled runs: their next read
        self.frames = FrameCache()

    def request_read(self, run_id: str) -> None:
        self._pending[run_id] = None
        self._wakeup.set()

    # -- the consumer -----------------------------------------------------------------------

    async def consume(self) -> None:
        """Handles notifications in arrival order, forever."""
        queue = self.queue
        while True:
            self.handle(await queue.get())
            while not queue.empty():
                self.handle(queue.get_nowait())

    def handle(self, payload: str | None) -> None:
        fanout = self.fanout
        if payload is RESYNC:
            for run_id in fanout.resync():
                self.request_read(run_id)
            return
        self.metrics.notifications_in += 1
        try:
            notification = parse_notification(payload)
        except NotificationError as exc:
            logger.error("unreadable notification, re-reading every followed run: %s", exc,
                         extra={"action": "notification_invalid"})
            for run_id in fanout.resync():
                self.request_read(run_id)
            return
        if "events" in notification:
            runs = fanout.runs
            events = cast(EventsNotification, notification)["events"]
            self.metrics.events_in_notify += len(events)
            for event in events:
                run_id = event["run_id"]
                if run_id not in runs:
                    continue  # nobody follows it here: not even serialised
                try:
                    text = event_frame(event)
                except TypeError:
                    # Nested deeper than orjson writes (PostgreSQL stores more): the log's
                    # text is forwarded as it is, read by reference.
                    if fanout.note_refs(run_id, event["seq"]):
                        self.request_read(run_id)
                    continue
                if fanout.publish(run_id, event["seq"], TextFrame(text), len(text)):
                    self.request_read(run_id)
        else:
            for ref in notification["refs"]:
                if fanout.note_refs(ref["run_id"], ref["to"]):
                    self.request_read(ref["run_id"])

    # -- the log reader ---------------------------------------------------------------------

    async def read_loop(self) -> None:
        """Serves ``request_read``: batched log reads, applied to every subscriber of each run."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                runs = list(self._pending)[: self.batch]
                for run_id in runs:
                    del self._pending[run_id]
                try:
                    await self.read(runs)
                except DatabaseUnavailableError as exc:
                    logger.warning("log read failed, retrying: %s", exc,
                                   extra={"action": "log_read_error"})
                    for run_id in runs:
                        self._pending[run_id] = None
                    await asyncio.sleep(READ_RETRY_DELAY)

    async def read(self, runs: Sequence[str]) -> None:
        fanout = self.fanout
        reads: list[tuple[str, int, int | None]] = []
        for run_id in runs:
            since = fanout.read_since(run_id)
            if since is not None:
                reads.append((run_id, since, min(since + self.page, MAX_SEQ)))
        if not reads:
            return
        epoch = fanout.epoch
        found = await self.store.get_runs_events_json(reads)
        self.metrics.log_reads += 1
        for run_id, since, _until in reads:
            rows = found.pop(run_id, [])
            self.metrics.events_in_log += len(rows)
            items = log_items(run_id, rows, self.frames)
            del rows
            if fanout.apply_log(run_id, items, since=since,
                                complete=len(items) < self.page, epoch=epoch):
                del items
                await self._behind(run_id)

    async def _behind(self, run_id: str) -> None:
        """After a read left some subscription of the run behind: read on now, or, for
        subscriptions the log could not move on, later with backoff, then end them."""
        stalled = self.fanout.stalled(run_id)
        if not stalled:
            self.request_read(run_id)
            return
        given_up = [sub for sub in stalled if sub.stalls > len(STALL_RETRY_DELAYS)]
        if given_up:
            await self._end_stalled(run_id, given_up)
        waiting = [sub.stalls for sub in stalled if sub.stalls <= len(STALL_RETRY_DELAYS)]
        if waiting and run_id not in self._retries:
            delay = STALL_RETRY_DELAYS[max(waiting) - 1]
            self._retries[run_id] = asyncio.get_running_loop().call_later(
                delay, self._retry, run_id)

    def _retry(self, run_id: str) -> None:
        del self._retries[run_id]
        self.request_read(run_id)

    async def _end_stalled(self, run_id: str, subs: list[Subscription]) -> None:
        """Ends subscriptions the log cannot serve: ``gap`` when the run still exists (events
        were deleted below what it holds), ``not_found`` when the run is gone."""
        try:
            exists, _owner = await self.store.get_run_owner(uuid.UUID(run_id))
        except DatabaseUnavailableError:
            self.request_read(run_id)  # decided on a later read
            return
        fanout = self.fanout
        for sub in subs:
            if not fanout.is_current(sub):
                continue
            fanout.unsubscribe(sub.client, run_id)
            if exists:
                text = error_frame(
                    "gap", f"events of run {run_id} after seq {sub.last_seq} are missing from "
                    f"its log (deleted): subscribe again with since to skip them", run_id)
            else:
                text = error_frame("not_found", f"run {run_id} no longer exists", run_id)
            fanout.send(sub.client, TextFrame(text), len(text))
            self.metrics.log_gaps += 1
        logger.warning("run %s: %s, %d subscription(s) ended", run_id,
                       "events missing from its log" if exists else "run deleted", len(subs),
                       extra={"action": "log_gap"})


class FrameCache:
    """The frames of large log events, by (run id, seq), for as long as an outbox holds them.

    Sockets replaying the same large event (a big output) then share one frame and its
    encodings instead of each holding its own copies: the log's events never change.
    """

    def __init__(self, min_bytes: int = SHARED_FRAME_BYTES) -> None:
        self.min_bytes = min_bytes
        self._frames: weakref.WeakValueDictionary[tuple[str, int], TextFrame] = (
            weakref.WeakValueDictionary())

    def __len__(self) -> int:
        return len(self._frames)

    def frame(self, run_id: str, seq: int, event_json: str) -> TextFrame:
        if len(event_json) < self.min_bytes:
            return TextFrame(event_frame_from_json(event_json))
        key = (run_id, seq)
        frame = self._frames.get(key)
        if frame is None:
            frame = self._frames[key] = TextFrame(event_frame_from_json(event_json))
        return frame


def log_items(run_id: str, rows: Sequence[tuple[int, str]],
              cache: FrameCache | None = None) -> list[Item]:
    """Frames for events read from the log as JSON text, wrapped without decoding."""
    items: list[Item] = []
    if cache is None:
        for seq, text in rows:
            frame = event_frame_from_json(text)
            items.append((seq, TextFrame(frame), len(frame)))
        return items
    for seq, text in rows:
        message = cache.frame(run_id, seq, text)
        items.append((seq, message, len(message.text)))
    return items
