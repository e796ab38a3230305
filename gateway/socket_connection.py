"""One socket of the gateway's own websocket protocol, as the fan-out sees it: its outbox
written to the transport (in pieces when large), its client messages handled in order.

``gateway/websocket.py`` owns the bytes (handshake, frames in, close); this module owns what
goes out and when: the fan-out's hot path (``flush``, once per socket per burst of events).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from websockets.typing import BytesLike

from gateway.auth import Principal
from gateway.fanout import CLOSE_GOING_AWAY
from gateway.realtime import Connection
from gateway.wire import TextFrame

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.websocket import RealtimeProtocol

logger = logging.getLogger(__name__)

MAX_BACKLOG = 32  # client messages waiting behind a replay before reading pauses
# Bytes handed to the transport at once from a large outbox (a big event): the rest waits in
# the outbox until the transport drains, so a slow peer holds at most this beyond the transport's
# high-water mark.
WRITE_PIECE = 256 * 1024
# Why reading is paused (bits): messages waiting behind a replay, a transport that is full.
READ_HELD_BY_BACKLOG = 1
READ_HELD_BY_WRITES = 2
# Closing a socket that stopped reading in the middle of a frame: up to this much of the frame
# is still queued, so that the close frame can follow it (the close timeout then applies);
# beyond, the connection is aborted (the client sees 1006 and resumes as after 1013).
CLOSING_REST_BYTES = 1024 * 1024
TRIM_DELAY = 1.0  # seconds between a large frame's release and giving freed heap back


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None
    return trim if callable(trim) else None


_TRIM = _malloc_trim()
_trim_scheduled = False


def release_memory_soon() -> None:
    """Gives the heap freed by large frames back to the system, once per ``TRIM_DELAY``.

    glibc raises its mmap threshold after freeing a large block, so the next large frames are
    carved from the heap, and a freed heap is kept by the process: measured, 8 sockets that
    replayed two 4 MiB events left RSS 40-50 MiB up after they closed, and ``malloc_trim``
    brought it back to where it was. A no-op without glibc.
    """
    global _trim_scheduled
    if _TRIM is None or _trim_scheduled:
        return
    _trim_scheduled = True
    asyncio.get_running_loop().call_later(TRIM_DELAY, _trim_now)


def _trim_now() -> None:
    global _trim_scheduled
    _trim_scheduled = False
    if _TRIM is not None:
        _TRIM(0)


class DirectConnection(Connection):
    """A ``Connection`` whose outbox goes straight to its ``RealtimeProtocol``'s transport.

    Client messages are handled in order as they arrive; a subscribe's replay runs in a task,
    and messages that arrive meanwhile wait behind it (reading pauses past ``MAX_BACKLOG``).
    """

    def __init__(self, gateway: Gateway, principal: Principal, number: int,
                 protocol: RealtimeProtocol) -> None:
        super().__init__(gateway, principal, number)
        self.protocol = protocol
        self._scheduled = False
        self._busy: asyncio.Task[None] | None = None
        self._backlog: list[str | int] | None = None
        # A large outbox goes out in pieces: the rest of the frame being written (its shared
        # bytes, not a copy), and that frame, which stays at the head of the outbox, counted
        # against its bounds, until its last byte is handed to the transport.
        self._writing: memoryview | None = None
        self._writing_frame: TextFrame | None = None
        self._wrote_large = False  # a large outbox went through here: trim the heap after

    def _wake(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self.protocol.server.schedule_flush(self)

    def flush(self) -> int:
        """Writes the outbox as one chunk (unless the transport is paused), then the close
        frame if the client is closing. Returns the frames written.

        The hot path of the fan-out (once per socket per burst of events): kept lean.
        """
        self._scheduled = False
        client = self.client
        frames = client.frames
        closing = client.close_code is not None
        written = 0
        if self._writing is not None or client.queued_bytes > WRITE_PIECE:
            written = self._flush_in_pieces(closing)
        elif frames:
            protocol = self.protocol
            if closing or not protocol.write_paused:
                client.frames = []
                client.queued_bytes = 0
                transport = protocol.transport
                if transport is not None and not transport.is_closing():
                    deflate_from = protocol.deflate_from
                    upto = protocol.server.deflate_max_bytes
                    if len(frames) == 1:
                        transport.write(frames[0].for_socket(deflate_from, upto))
                    else:
                        transport.write(b"".join([frame.for_socket(deflate_from, upto)
                                                  for frame in frames]))
                written = len(frames)
                if self._room is not None or client.starved:
                    self.took_outbox()
        if closing and not client.frames and self._writing is None:
            code = client.close_code
            assert code is not None
            self.protocol.close(code, client.close_reason)
        return written

    def _flush_in_pieces(self, closing: bool) -> int:
        """Hands a large outbox to the transport ``WRITE_PIECE`` bytes at a time until the
        transport is full; ``resume_writing`` goes on. Closing, the rest goes at once (the
        frames left are the explanation of the close), unless the peer stopped reading in the
        middle of a frame of which more than ``CLOSING_REST_BYTES`` remain: the connection is
        then aborted rather than buffer that for a peer that does not read. Returns the frames
        completed."""
        protocol = self.protocol
        transport = protocol.transport
        client = self.client
        frames = client.frames
        if transport is None or transport.is_closing() or (
                closing and protocol.write_paused and self._writing is not None
                and len(self._writing) > CLOSING_REST_BYTES):
            self._writing = self._writing_frame = None
            client.frames = []
            client.queued_bytes = 0
            if transport is not None:
                transport.abort()
            return 0
        if protocol.write_paused and not closing:
            return 0
        self._wrote_large = True
        deflate_from = protocol.deflate_from
        upto = protocol.server.deflate_max_bytes
        writing = self._writing
        # frames[:started] were begun; of them, frames[:finished] are wholly handed over.
        started = 1 if writing is not None and frames and frames[0] is self._writing_frame else 0
        finished = 0
        chunk: list[BytesLike] = []
        room = WRITE_PIECE
        while True:
            if writing is None:
                if started == len(frames):
                    break
                frame = self._writing_frame = frames[started]
                started += 1
                writing = memoryview(frame.for_socket(deflate_from, upto))
            if closing or len(writing) <= room:
                chunk.append(writing)
                room -= len(writing)
                writing = None
                finished = started
            else:
                chunk.append(writing[:room])
                writing = writing[room:]
                room = 0
            if room <= 0:
                transport.write(b"".join(chunk))
                chunk = []
                room = WRITE_PIECE
                if protocol.write_paused and not closing:
                    break
        if chunk:
            transport.write(b"".join(chunk))
        self._writing = writing
        if writing is None:
            self._writing_frame = None
            if not frames[finished:]:
                release_memory_soon()
        if finished:
            done = frames[:finished]
            del frames[:finished]
            client.queued_bytes = (max(0, client.queued_bytes - sum(len(f.text) for f in done))
                                   if frames else 0)
            if self._room is not None or client.starved:
                self.took_outbox()
        return finished

    def keepalive(self, now: float, interval: float, may_ping: bool) -> bool:
        return self.protocol.keepalive(now, interval, may_ping)

    def peer_closing(self) -> None:
        """The peer started (or answered) the closing handshake: nothing more goes out."""
        self.peer_gone = True
        client = self.client
        if client.close_code is None:
            self.gateway.fanout.close(client, CLOSE_GOING_AWAY, "peer closed")

    def closed(self) -> None:
        busy = self._busy
        if busy is not None and not busy.done():
            busy.cancel()
        self._writing = self._writing_frame = None
        super().closed()
        if self._wrote_large:
            release_memory_soon()

    def receive(self, message: str | int) -> None:
        """A client message: its text, or the size of a binary one (refused either way)."""
        if self._busy is not None:
            backlog = self._backlog
            if backlog is None:
                backlog = self._backlog = []
            backlog.append(message)
            if len(backlog) == MAX_BACKLOG:
                self.protocol.hold_reading(READ_HELD_BY_BACKLOG)
            return
        replay = self._handle(message)
        if replay is not None:
            self._busy = asyncio.get_running_loop().create_task(
                self._in_order(replay), name=f"pgflow-ws-{self.number}-subscribe")

    def _handle(self, message: str | int) -> Coroutine[Any, Any, None] | None:
        if isinstance(message, int):
            self.on_binary(message)
            return None
        return self.on_text(message)

    async def _in_order(self, replay: Coroutine[Any, Any, None]) -> None:
        """Runs a replay, then the messages that arrived meanwhile, in order."""
        client = self.client
        try:
            await replay
            while self._backlog and client.close_code is None:
                more = self._handle(self._backlog.pop(0))
                if more is not None:
                    await more
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("socket %s: reader failed", self.number,
                             extra={"action": "socket_failed"})
            self.fail()
        finally:
            self._busy = None
            self._backlog = None
            self.protocol.release_reading(READ_HELD_BY_BACKLOG)
