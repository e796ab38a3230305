"""The writing half of a native socket: its outbox to its transport, in pieces when large.

``native_socket.py`` owns the bytes that come in (handshake, client frames, close);
``NativeOutbox``, mixed into its ``NativeSocket``, owns what goes out and when: the fan-out's
hot path (``flush``, once per socket per burst of events).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

from websockets.typing import BytesLike

from gateway.session import Session
from gateway.wire import TextFrame

logger = logging.getLogger(__name__)

# Bytes handed to the transport at once from a large outbox (a big event): the rest waits in
# the outbox until the transport drains, so a slow peer holds at most this beyond the transport's
# high-water mark.
WRITE_PIECE = 256 * 1024
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


class NativeOutbox:
    """Mixed into ``NativeSocket``: writes its session's outbox to its transport.

    One object per socket is its transport's protocol, its outbox writer and its reader.
    """

    __slots__ = ("_scheduled", "_writing", "_writing_frame", "_wrote_large")
    # Provided by NativeSocket.
    session: Session | None
    transport: asyncio.Transport | None
    write_paused: bool
    deflate_from: int | None
    deflate_max_bytes: int
    # A large outbox goes out in pieces: the rest of the frame being written (its shared
    # bytes, not a copy), and that frame, which stays at the head of the outbox, counted
    # against its bounds, until its last byte is handed to the transport.
    _writing: memoryview | None
    _writing_frame: TextFrame | None
    _wrote_large: bool  # a large outbox went through here: trim the heap after
    _scheduled: bool

    def close(self, code: int, reason: str) -> None:
        raise NotImplementedError

    def flush(self) -> int:
        """Writes the outbox as one chunk (unless the transport is paused), then the close
        frame if the client is closing. Returns the frames written.

        The hot path of the fan-out (once per socket per burst of events): kept lean.
        """
        self._scheduled = False
        session = self.session
        assert session is not None
        client = session.client
        frames = client.frames
        closing = client.close_code is not None
        written = 0
        if self._writing is not None or client.queued_bytes > WRITE_PIECE:
            written = self._flush_in_pieces(closing)
        elif frames and (closing or not self.write_paused):
            client.frames = []
            client.queued_bytes = 0
            transport = self.transport
            if transport is not None and not transport.is_closing():
                deflate_from = self.deflate_from
                upto = self.deflate_max_bytes
                if len(frames) == 1:
                    transport.write(frames[0].for_socket(deflate_from, upto))
                else:
                    transport.write(b"".join([frame.for_socket(deflate_from, upto)
                                              for frame in frames]))
            written = len(frames)
            if session.wants_outbox_taken:
                session.took_outbox()
        if closing and not client.frames and self._writing is None:
            code = client.close_code
            assert code is not None
            self.close(code, client.close_reason)
        return written

    def _flush_in_pieces(self, closing: bool) -> int:
        """Hands a large outbox to the transport ``WRITE_PIECE`` bytes at a time until the
        transport is full; ``resume_writing`` goes on. Closing, the rest goes at once (the
        frames left are the explanation of the close), unless the peer stopped reading in the
        middle of a frame of which more than ``CLOSING_REST_BYTES`` remain: the connection is
        then aborted rather than buffer that for a peer that does not read. Returns the frames
        completed."""
        session = self.session
        assert session is not None
        transport = self.transport
        client = session.client
        frames = client.frames
        if transport is None or transport.is_closing() or (
                closing and self.write_paused and self._writing is not None
                and len(self._writing) > CLOSING_REST_BYTES):
            self._writing = self._writing_frame = None
            client.frames = []
            client.queued_bytes = 0
            if transport is not None:
                transport.abort()
            return 0
        if self.write_paused and not closing:
            return 0
        self._wrote_large = True
        deflate_from = self.deflate_from
        upto = self.deflate_max_bytes
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
                if self.write_paused and not closing:
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
            if session.wants_outbox_taken:
                session.took_outbox()
        return finished
