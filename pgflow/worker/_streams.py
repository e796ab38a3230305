"""What running steps stream (``ctx.emit``), on its way to the run's log.

    handler ──emit()──▶ the attempt's buffer ──flusher, every --stream-interval──▶ stream_steps
    (any thread)        (bounded in bytes)       (all steps' chunks: one call, one transaction)

``emit`` returns at once: it encodes the value (so a value PostgreSQL cannot store fails the
handler's own call) and appends it to the attempt's buffer. The flusher writes every buffer
that has chunks, together, at most every ``interval`` seconds, or at once when a buffer fills.
Before an attempt's result is reported the worker ``close``s its buffer, which writes what is
left and waits for it: every chunk of an attempt is in the log before its step:completed or
step:failed. A buffer over its bound refuses ``emit`` (``StreamBufferFullError``) from the event
loop's thread; ``emit_async`` waits for room instead, and a handler in a thread waits in
``emit`` itself.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from pgflow.db.json_values import UnstorableJSONError, encode_json
from pgflow.db.store import Store
from pgflow.errors import StreamBufferFullError, StreamError
from pgflow.worker._retry import DB_CALL_TIMEOUT, Retry

logger = logging.getLogger(__name__)

DEFAULT_STREAM_INTERVAL = 0.02  # seconds between flushes, at most
MAX_CHUNK_BYTES = 64 * 1024  # one chunk, as JSON
MAX_BUFFERED_BYTES = 1024 * 1024  # one attempt's chunks not yet written
MAX_FLUSH_BYTES = 4 * 1024 * 1024  # chunks written by one stream_steps call

Key = tuple[uuid.UUID, str, int]  # run_id, step_slug, attempt


def encode_chunk(value: Any) -> bytes:
    """A chunk as JSON text, checked as a step's output is (``json_values.encode_json``)."""
    try:
        encoded = encode_json(value)
    except UnstorableJSONError as exc:
        raise StreamError(f"cannot stream {exc}") from None
    if len(encoded) > MAX_CHUNK_BYTES:
        raise StreamError(f"a chunk of {len(encoded)} bytes is over the {MAX_CHUNK_BYTES} limit")
    return encoded


@dataclass(eq=False)
class StreamBuffer:
    """One attempt's chunks not yet written. ``emit`` may be called from any thread."""

    key: Key
    streams: Streams
    chunks: list[bytes] = field(default_factory=list)
    buffered: int = 0  # bytes in chunks, and in the flush in flight
    closed: bool = False
    stale: bool = False  # the engine refused a flush: the attempt lost its lease
    lock: threading.Lock = field(default_factory=threading.Lock)
    room: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.room = threading.Condition(self.lock)

    def emit(self, value: Any) -> None:
        self._append(encode_chunk(value))

    async def emit_async(self, value: Any) -> None:
        encoded = encode_chunk(value)
        while True:
            with self.lock:
                if self.closed or self.buffered + len(encoded) <= self.streams.max_buffered:
                    break
            self.streams.wake()
            await self.streams.flushed()
        self._append(encoded)

    def _append(self, encoded: bytes) -> None:
        streams = self.streams
        on_loop = streams.on_loop_thread()
        with self.lock:
            while not self.closed and self.buffered + len(encoded) > streams.max_buffered:
                if on_loop:
                    raise StreamBufferFullError(
                        f"step {self.key[1]!r} has {self.buffered} bytes of chunks not yet "
                        f"written (the bound is {streams.max_buffered}): "
                        "await ctx.emit_async(value) waits for room")
                streams.wake_threadsafe()
                self.room.wait(timeout=1.0)  # woken by each flush
            if self.closed:
                raise StreamError(f"step {self.key[1]!r} ended: its stream is closed")
            if self.stale:
                return  # its lease is gone: the attempt's result will be stale too
            # the flusher hears of a buffer once per flush, not once per chunk: when it gets
            # its first chunk since the last flush, and when it passes half full
            first = not self.chunks
            half = streams.max_buffered // 2
            filled = self.buffered <= half < self.buffered + len(encoded)
            self.chunks.append(encoded)
            self.buffered += len(encoded)
        if filled:
            streams.wake_threadsafe()
        elif first:
            streams.note_threadsafe()


class Streams:
    """Every running attempt's buffer, and the loop that flushes them."""

    def __init__(self, worker_id: str, interval: float = DEFAULT_STREAM_INTERVAL,
                 max_buffered: int = MAX_BUFFERED_BYTES) -> None:
        self.worker_id = worker_id
        self.interval = interval
        self.max_buffered = max_buffered
        self._buffers: dict[Key, StreamBuffer] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self._pending = asyncio.Event()  # some buffer has chunks
        self._now = asyncio.Event()  # flush without waiting for the interval
        self._flushed = asyncio.Event()  # a flush ended: room in its buffers
        self._closing: dict[Key, asyncio.Future[None]] = {}

    # -- the handlers' side ---------------------------------------------------------------

    def open(self, key: Key) -> StreamBuffer:
        buffer = StreamBuffer(key, self)
        self._buffers[key] = buffer
        return buffer

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self._thread

    def note_threadsafe(self) -> None:
        self._call_threadsafe(self._pending.set)

    def wake_threadsafe(self) -> None:
        self._call_threadsafe(self.wake)

    def wake(self) -> None:
        self._pending.set()
        self._now.set()

    async def flushed(self) -> None:
        self._flushed.clear()
        await self._flushed.wait()

    def _call_threadsafe(self, callback: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        if self.on_loop_thread():
            callback()
        else:
            loop.call_soon_threadsafe(callback)

    async def close(self, key: Key) -> None:
        """Ends the attempt's stream: writes what is left of it and returns once it is in
        the log (or stale), so that its result is reported after every chunk."""
        buffer = self._buffers.get(key)
        if buffer is None:
            return
        with buffer.lock:
            buffer.closed = True
            buffer.room.notify_all()
            left = bool(buffer.chunks) or buffer.buffered > 0
        if left:
            done = asyncio.get_running_loop().create_future()
            self._closing[key] = done
            self.wake()
            await done
        self._buffers.pop(key, None)

    def abandon(self, key: Key) -> None:
        """Drops an attempt's stream without writing it (the worker gave its task back)."""
        buffer = self._buffers.pop(key, None)
        if buffer is not None:
            with buffer.lock:
                buffer.closed = True
                buffer.chunks.clear()
                buffer.room.notify_all()
        waiter = self._closing.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the flusher --------------------------------------------------------------------------

    async def run(self, store: Store) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        retry = Retry("writing streamed chunks")
        while True:
            await self._pending.wait()
            if not self._now.is_set():
                try:
                    async with asyncio.timeout(self.interval):
                        await self._now.wait()
                except TimeoutError:
                    pass
            self._pending.clear()
            self._now.clear()
            try:
                await self.flush(store)
            except Exception as exc:  # the chunks went back to their buffers
                self._pending.set()
                await asyncio.sleep(retry.failed(exc))
            else:
                retry.succeeded()

    async def flush(self, store: Store) -> None:
        """Writes every buffer's chunks in one ``stream_steps`` call."""
        taken: list[tuple[StreamBuffer, list[bytes]]] = []
        size = 0
        for buffer in list(self._buffers.values()):
            with buffer.lock:
                if not buffer.chunks:
                    continue
                chunks, buffer.chunks = buffer.chunks, []
            taken.append((buffer, chunks))
            size += sum(len(c) for c in chunks)
            if size >= MAX_FLUSH_BYTES:
                self._pending.set()  # the rest at once, in the next call
                self._now.set()
                break
        try:
            if taken:
                async with asyncio.timeout(DB_CALL_TIMEOUT):
                    applied = await store.stream_steps(
                        self.worker_id,
                        [(b.key, b"[" + b",".join(chunks) + b"]") for b, chunks in taken],
                    )
                for (buffer, chunks), written in zip(taken, applied, strict=True):
                    with buffer.lock:
                        buffer.buffered -= sum(len(c) for c in chunks)
                        if not written:
                            buffer.stale = True
                            buffer.buffered -= sum(len(c) for c in buffer.chunks)
                            buffer.chunks.clear()
                        buffer.room.notify_all()
        except BaseException:
            for buffer, chunks in taken:  # back in front of what came since, in order
                with buffer.lock:
                    buffer.chunks[:0] = chunks
            raise
        finally:
            self._flushed.set()
        self._finish_closing()

    def _finish_closing(self) -> None:
        for key, done in list(self._closing.items()):
            buffer = self._buffers.get(key)
            if buffer is None or not buffer.chunks:
                del self._closing[key]
                if not done.done():
                    done.set_result(None)
