"""The relay: the LISTEN consumer, and every read of the event log.

- ``pgflow.db.listen.Listener`` LISTENs on ``pgflow_events`` and puts each payload, and
  ``RESYNC`` after each (re)connect, on a queue.
- ``Relay.consume`` takes that queue in order (the single consumer): inline events are
  serialised once and handed to the fan-out; references and gaps become log reads.
- ``Relay.read_loop`` batches the reads of runs whose subscriptions are behind: one query for
  many runs, one read per run whatever its number of subscribers. A read that cannot move a
  subscription on (a hole in the log, a run gone) is retried with backoff
  (``STALL_RETRY_DELAYS``), then the subscription ends with an error frame, ``gap`` or
  ``not_found``: nothing re-reads in a loop.
- Replays: sessions ask for the pages of their new subscriptions' replays
  (``session.LogReads.request_replay``); each page is read at once, in a task that
  ``Relay.replay_loop`` owns, and handed back to its session. Not batched with the run reads:
  a replay's first page needs its run's flow, owner and last seq from the same snapshot, and a
  subscribe must not wait behind other runs' reads (the pool bounds how many run at once).
- ``FrameCache`` shares the frame of a large event read from the log between the sockets that
  replay it, for as long as one of them holds it.

Sessions ask; the relay reads and answers: the dependency points from here to ``session.py``,
never back.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from collections.abc import Callable, Sequence
from typing import cast

from gateway.fanout import Fanout, Item, Subscription
from gateway.metrics import Metrics
from gateway.session import ReplayRead, RunHead
from gateway.wire import TextFrame, error_frame, event_frame, event_frame_from_json
from pgflow.db.listen import RESYNC
from pgflow.db.notifications import (
    MAX_SEQ,
    EventsNotification,
    NotificationError,
    parse_notification,
)
from pgflow.db.read_queue import ReadQueue
from pgflow.db.store import Store
from pgflow.errors import DatabaseUnavailableError, PGFlowError, UnknownRunError

logger = logging.getLogger(__name__)

APPLICATION_NAME = "pgflow-gateway-listener"
READ_PAGE = 500  # events per run per log read
READ_BATCH = 200  # runs per log read query
READ_RETRY_DELAY = 0.5  # seconds, after a failed log read
# Seconds before each re-read of a run whose log could not move a subscription on; one more
# such read and the subscription ends (``gap`` / ``not_found``): ~1.3 s and 4 reads in all.
STALL_RETRY_DELAYS = (0.05, 0.25, 1.0)
SHARED_FRAME_BYTES = 64 * 1024  # log events from this size share one frame between sockets

class Relay:
    """Routes the listener's notifications into the fan-out, and reads the log for it.

    ``store`` gives the gateway's store once it is open (it raises until then).
    """

    def __init__(
        self,
        fanout: Fanout,
        store: Callable[[], Store],
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
        # runs to read, batched; a read the database failed is tried again
        self._reads = ReadQueue(self.read, batch=batch, retryable=DatabaseUnavailableError,
                                retry_delay=lambda _failures: READ_RETRY_DELAY)
        self._retries: dict[str, asyncio.TimerHandle] = {}  # stalled runs: their next read
        self._replays: set[asyncio.Task[None]] = set()  # page reads under way
        self.frames = FrameCache()

    def request_read(self, run_id: str) -> None:
        self._reads.request(run_id)

    def request_replay(self, read: ReplayRead) -> None:
        task = asyncio.get_running_loop().create_task(
            self._replay(read), name=f"pgflow-replay-ws-{read.session.number}")
        self._replays.add(task)
        task.add_done_callback(self._replays.discard)

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
        await self._reads.run()

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
        found = await self.store().get_runs_events_json(reads)
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

    # -- the replay reader ------------------------------------------------------------------

    async def replay_loop(self) -> None:
        """Owns the replay reads (``request_replay``): when it stops, so do they."""
        try:
            await asyncio.Event().wait()
        finally:
            for task in list(self._replays):
                task.cancel()

    async def _replay(self, read: ReplayRead) -> None:
        session = read.session
        try:
            if not session.start_read(read):
                return
            await self._read_replay(read)
        except Exception:
            # A bug in one socket's replay must not stop the reader: that socket closes.
            logger.exception("socket %s: reader failed", session.number,
                             extra={"action": "socket_failed"})
            session.fail()

    async def _read_replay(self, read: ReplayRead) -> None:
        run_id = read.run_id
        since = read.since
        until = min(since + self.page, MAX_SEQ)
        max_bytes = self.fanout.soft_bytes
        epoch = self.fanout.epoch
        head: RunHead | None = None
        try:
            store = self.store()
            if read.first:
                replay = await store.get_run_replay(uuid.UUID(run_id), since, until,
                                                    max_bytes=max_bytes)
                if replay is None:
                    raise UnknownRunError(f"unknown run {run_id}")
                head = RunHead(replay.flow_slug, replay.owner, replay.last_seq)
                rows, truncated = replay.events, replay.truncated
                del replay
            else:
                rows, truncated = await store.get_run_events_json(
                    uuid.UUID(run_id), since, until, max_bytes=max_bytes)
        except PGFlowError as exc:
            if not read.first and not isinstance(exc, DatabaseUnavailableError):
                raise
            read.session.replay_failed(read, exc)
            return
        self.metrics.log_reads += 1
        self.metrics.events_in_log += len(rows)
        # Each read stops at the outbox's soft limit in bytes (in SQL): a replay holds about
        # one outbox's worth of events, however large they are.
        complete = len(rows) < self.page and not truncated
        items = log_items(run_id, rows, self.frames)
        del rows  # nothing of a page outlives it but what the outbox took
        read.session.replay_read(read, head, items, complete=complete, epoch=epoch)

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
            exists, _owner = await self.store().get_run_owner(uuid.UUID(run_id))
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
