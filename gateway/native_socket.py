"""The native transport: ``/realtime`` under uvicorn, on websockets' sans-I/O protocol.

``uvicorn.Config(ws=NativeSocketServer(...))`` hands every websocket upgrade to this module
instead of to an ASGI app. Why (docs/design/fanout.md has the measurements):

- **Shared bytes, one write per burst.** A frame is encoded once (``wire.TextFrame``) and the
  same bytes go to every socket's transport; frames queued during one notification's fan-out
  leave in one ``transport.write`` per socket, from one callback for all sockets. No task wakes
  up per socket per event.
- **Small idle sockets.** No task, queue or event per socket: an idle socket is its transport,
  a ``NativeSocket``, websockets' frame parser, its ``Session`` and the fan-out's ``Client``.
- **Deflate that costs one compression per event.** permessage-deflate is negotiated with no
  context takeover in either direction, so each compressed message stands alone and every
  socket shares it, and no socket keeps a compressor or decompressor between messages. Frames
  under ``--deflate-min-bytes`` (1 KiB) go out plain: on a few hundred bytes of JSON the
  client's inflate costs more time than the bytes saved.

websockets' sans-I/O ``ServerProtocol`` performs the handshake and extension negotiation; after
it, a bare ``Protocol`` in the OPEN state parses client frames (it answers pings, enforces the
size limit, runs the close handshake). Flow control is the transport's: a paused transport
keeps frames in the outbox, where the fan-out's bounds apply.

What a client can make a socket hold is bounded (docs/design/fanout.md, "What one socket
holds"): the message it is sending (``--max-frame-bytes`` for the whole message, fragments
included), its outbox (``--socket-buffer-*``), and the transport's buffer. Large frames go to
the transport in pieces of ``WRITE_PIECE`` as it drains, never whole; pongs are coalesced (only
the latest ping of a read is answered, as RFC 6455 5.5.3 allows); and a socket whose transport
is full is not read until it drains, so a peer that floods without reading cannot make the
gateway buffer its answers.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import Any, cast

from starlette.datastructures import Headers as StarletteHeaders
from websockets.datastructures import Headers
from websockets.exceptions import PayloadTooBig
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import OPEN, Protocol, Side
from websockets.server import ServerProtocol
from websockets.typing import BytesLike

from gateway.config import GatewayConfig
from gateway.metrics import Metrics
from gateway.native_outbox import NativeOutbox, release_memory_soon
from gateway.session import Rejected, Session, Unavailable
from gateway.sockets import Sockets
from gateway.wire import CLOSE_GOING_AWAY, CLOSE_POLICY, TextFrame, close_reason, error_body

logger = logging.getLogger(__name__)

PATH = "/realtime"
_PING = Frame(Opcode.PING, b"pgflow").serialize(mask=False)
_PONG_HEADER = 0x8A  # FIN + PONG: the first byte of every pong websockets queues (never deflated)

# websockets logs every handshake at INFO ("connection open"): one line per socket is noise.
_frames_logger = logging.getLogger("gateway.native_socket.frames")
# Why reading is paused (bits): messages waiting behind a replay, a transport that is full.
READ_HELD_BY_BACKLOG = 1
READ_HELD_BY_WRITES = 2
if _frames_logger.level == logging.NOTSET:
    _frames_logger.setLevel(logging.WARNING)


class NativeSocketServer:
    """uvicorn's websocket protocol factory for one gateway, and the fan-out's write scheduler.

    Sockets whose outbox went from empty to non-empty are flushed together in one loop
    callback: every frame queued by one notification's fan-out leaves in one write per socket.
    """

    def __init__(self, sockets: Sockets, metrics: Metrics, config: GatewayConfig, *,
                 max_message_bytes: int) -> None:
        self.sockets = sockets
        self.metrics = metrics
        self.max_message_bytes = max_message_bytes
        self.max_frame_bytes = config.max_frame_bytes
        self.close_timeout = config.close_timeout
        self.deflate_min_bytes = config.deflate_min_bytes
        self.deflate_max_bytes = config.deflate_max_bytes
        self._ready: list[NativeSocket] = []
        metrics.observe(
            "pgflow_socket_buffered_bytes", "gauge",
            "bytes waiting for sockets: outboxes and transport buffers, control frames included",
            sockets.buffered_bytes)

    def __call__(self, config: Any, server_state: Any, app_state: Any,
                 _loop: asyncio.AbstractEventLoop | None = None) -> NativeSocket:
        return NativeSocket(self, server_state.connections)

    def schedule_flush(self, sock: NativeSocket) -> None:
        if not self._ready:
            asyncio.get_running_loop().call_soon(self._flush)
        self._ready.append(sock)

    def _flush(self) -> None:
        ready = self._ready
        self._ready = []
        written = 0
        for sock in ready:
            written += sock.flush()
        self.metrics.frames_out += written


class NativeSocket(NativeOutbox, asyncio.Protocol):
    """One socket: the handshake, client frames in (to its session, in order), shared frames
    out (``NativeOutbox``), the close."""

    __slots__ = ("_closing_timer", "_deferred_close", "_fragments", "_handshake", "_read_holds",
                 "connections",
                 "deflate_from", "deflate_max_bytes", "last_heard", "pinged_at", "sending_since",
                 "server", "session", "transport", "write_paused", "ws")

    def __init__(self, server: NativeSocketServer, connections: set[Any]) -> None:
        self.server = server
        self.connections = connections  # uvicorn's, so that its shutdown waits for ours
        self.transport: asyncio.Transport | None = None
        self._handshake: ServerProtocol | None = ServerProtocol(
            extensions=[ServerPerMessageDeflateFactory(
                server_no_context_takeover=True, client_no_context_takeover=True,
            )],
            max_size=server.max_message_bytes,
            logger=_frames_logger,
        )
        self.ws: Protocol | None = None
        self.session: Session | None = None  # once accepted
        # None: no permessage-deflate; else frames this long or longer go compressed.
        self.deflate_from: int | None = None
        self.deflate_max_bytes = server.deflate_max_bytes
        self.write_paused = False
        self.sending_since: float | None = None  # see sockets.OpenSocket
        self._scheduled = False
        self._writing: memoryview | None = None
        self._writing_frame: TextFrame | None = None
        self._wrote_large = False
        self.last_heard = 0.0
        self.pinged_at = 0.0
        # A fragmented message being assembled: its opcode and bytes so far. websockets limits
        # the whole message to --max-frame-bytes (its max_size counts every fragment).
        self._fragments: tuple[Opcode, bytearray] | None = None
        # websockets' close after a message over the limit, held until the answers to the
        # messages before it and the reason are out (see _too_large).
        self._deferred_close: list[bytes] | None = None
        self._closing_timer: asyncio.TimerHandle | None = None
        self._read_holds = 0  # READ_HELD_BY_* bits: reading is paused while any is set

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.connections.add(self)
        self.last_heard = asyncio.get_running_loop().time()

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        if ws is None:
            self._handshake_received(data)
            return
        self.last_heard = asyncio.get_running_loop().time()
        was_open = ws.state is OPEN
        ws.receive_data(data)
        self._handle_frames(ws, was_open)

    def eof_received(self) -> bool | None:
        ws = self.ws or self._handshake
        if ws is not None:
            ws.receive_eof()
            self._send_pending(ws)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        if self._closing_timer is not None:
            self._closing_timer.cancel()
            self._closing_timer = None
        if self.session is not None:
            self._writing = self._writing_frame = None
            self.server.sockets.closed(self, self.session)
            if self._wrote_large:
                release_memory_soon()
        self._handshake = None

    def pause_writing(self) -> None:
        self.write_paused = True
        # Nothing more is read from a peer that does not read: what it sends (pings, messages)
        # would only queue more answers behind the ones it is not taking.
        self.hold_reading(READ_HELD_BY_WRITES)
        if self.session is not None:
            self.sending_since = asyncio.get_running_loop().time()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.session is not None:
            self.sending_since = None
            self.server.metrics.frames_out += self.flush()
        if not self.write_paused:
            self.release_reading(READ_HELD_BY_WRITES)

    def buffered_bytes(self) -> int:
        """Bytes in the transport's buffer, not yet taken by the kernel."""
        transport = self.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def hold_reading(self, reason: int) -> None:
        if not self._read_holds:
            transport = self.transport
            if transport is not None and not transport.is_closing():
                transport.pause_reading()
        self._read_holds |= reason

    def release_reading(self, reason: int) -> None:
        if not self._read_holds & reason:
            return
        self._read_holds &= ~reason
        if not self._read_holds:
            transport = self.transport
            if transport is not None and not transport.is_closing():
                transport.resume_reading()

    def shutdown(self) -> None:
        """uvicorn's server shutdown: the gateway closed its sockets already (1001); what is
        still open here is closed now, and dropped after the close timeout."""
        session = self.session
        if session is not None and session.client.close_code is None:
            session.close(CLOSE_GOING_AWAY, "gateway shutting down")
        elif self.ws is None and self.transport is not None:
            self.transport.close()

    # -- writing ----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def close(self, code: int, reason: str) -> None:
        """Starts the closing handshake; the TCP connection is dropped if the peer does not
        answer within the close timeout (a peer that stopped reading never sees the frame)."""
        ws = self.ws
        if ws is None:
            return
        deferred = self._deferred_close
        if ws.state is OPEN:
            ws.send_close(code, close_reason(reason))
            self._send_pending(ws)
        elif deferred is not None:  # websockets' own close 1009, held by _too_large
            self._deferred_close = None
            transport = self.transport
            for data in deferred:
                if transport is None:
                    break
                if data:
                    if not transport.is_closing():
                        transport.write(data)
                else:
                    transport.close()
        else:
            return
        transport = self.transport
        if transport is not None and self._closing_timer is None:
            self._closing_timer = asyncio.get_running_loop().call_later(
                self.server.close_timeout, self._close_timed_out)

    def _close_timed_out(self) -> None:
        self._closing_timer = None
        logger.info("socket %s: close frame timed out, connection aborted", self._number(),
                    extra={"action": "socket_close_timeout"})
        if self.transport is not None:
            self.transport.abort()

    def _send_pending(self, ws: Protocol | ServerProtocol) -> None:
        """Writes what websockets queued (handshake response, pongs, close); an empty chunk
        means: close the TCP connection now. Of the pongs queued by one read, only the last is
        sent (RFC 6455 5.5.3: answering the most recent ping is enough): a ping flood costs one
        pong per read, and reading stops while the transport is full."""
        transport = self.transport
        if transport is None:
            return
        writes = ws.data_to_send()
        if len(writes) > 1 and ws is self.ws:
            last_pong = -1
            for index, data in enumerate(writes):
                if data and data[0] == _PONG_HEADER:
                    last_pong = index
            writes = [data for index, data in enumerate(writes)
                      if index == last_pong or not data or data[0] != _PONG_HEADER]
        for data in writes:
            if data:
                if not transport.is_closing():
                    transport.write(data)
            else:
                transport.close()

    def keepalive(self, now: float, interval: float, may_ping: bool) -> bool:
        """Pings a silent peer, drops one silent for twice the interval (a dead peer behind a
        NAT or a proxy never sends FIN). True when it pinged."""
        if self.ws is None or self.transport is None:
            return False
        silent = now - self.last_heard
        if silent > 2 * interval:
            logger.info("socket %s: no answer to ping for %.0fs, dropping it",
                        self._number(),
                        silent - interval, extra={"action": "socket_ping_timeout"})
            self.transport.abort()
        elif may_ping and silent > interval and self.pinged_at <= self.last_heard:
            self.pinged_at = now
            self.write(_PING)
            return True
        return False

    # -- the handshake ----------------------------------------------------------------------

    def _handshake_received(self, data: bytes) -> None:
        handshake = self._handshake
        if handshake is None:
            return
        handshake.receive_data(data)
        for event in handshake.events_received():
            if isinstance(event, Request):
                self._upgrade(handshake, event)
                return
        if handshake.handshake_exc is not None:  # not a websocket request: answered, closing
            self._send_pending(handshake)

    def _upgrade(self, handshake: ServerProtocol, request: Request) -> None:
        self._handshake = None
        server = self.server
        path, _, query = request.path.partition("?")
        if path != PATH:
            self._refuse(handshake, Unavailable(404, CLOSE_POLICY, "not_found",
                                                f"no websocket at {path}"))
            return
        headers = StarletteHeaders(raw=[
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in request.headers.raw_items()
        ])
        verdict = server.sockets.admit(headers, query.encode("latin-1"))
        if isinstance(verdict, Unavailable):
            self._refuse(handshake, verdict)
            return
        response = handshake.accept(request)
        handshake.send_response(response)
        self._send_pending(handshake)
        if response.status_code != 101:
            return  # a malformed upgrade: websockets answered why
        # max_size: the client's whole message, every fragment counted (websockets' Protocol
        # tracks the size of a fragmented message) and a frame's header refused before its body.
        ws = self.ws = Protocol(Side.SERVER, state=OPEN,
                                max_size=server.max_frame_bytes, logger=_frames_logger)
        ws.extensions = handshake.extensions
        for extension in ws.extensions:
            # Our shared compressor uses a 12-bit window: a client that limits ours below that
            # gets plain frames (allowed per message).
            if isinstance(extension, PerMessageDeflate) and extension.local_max_window_bits >= 12:
                self.deflate_from = server.deflate_min_bytes
        if isinstance(verdict, Rejected):
            self.write(TextFrame(verdict.frame).wire(False))
            self.close(CLOSE_POLICY, verdict.reason)
            return
        self.session = server.sockets.new_session(verdict, self._wake, self._hold_for_backlog)
        server.sockets.opened(self, self.session)

    def _refuse(self, handshake: ServerProtocol, refusal: Unavailable) -> None:
        body = error_body(refusal.code, refusal.message)
        handshake.send_response(Response(
            refusal.status, HTTPStatus(refusal.status).phrase,
            Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                     ("Retry-After", "1"), ("Connection", "close")]),
            body,
        ))
        self._send_pending(handshake)

    # -- reading ----------------------------------------------------------------------------

    def _handle_frames(self, ws: Protocol, was_open: bool) -> None:
        for frame in ws.events_received():
            if not isinstance(frame, Frame):
                continue
            opcode = frame.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                if frame.fin:
                    self._message(ws, opcode, frame.data)
                else:
                    self._fragments = (opcode, bytearray(frame.data))
            elif opcode is Opcode.CONT and self._fragments is not None:
                first, parts = self._fragments
                parts += frame.data
                if frame.fin:
                    self._fragments = None
                    self._message(ws, first, parts)
            # PING: websockets queued the pong; PONG: last_heard is enough; CLOSE: websockets
            # answered it and will ask us to close the TCP connection.
        if was_open and ws.state is not OPEN and isinstance(ws.parser_exc, PayloadTooBig):
            self._too_large(ws)
        if self._deferred_close is not None:
            return  # the connection closes in its turn (close() below)
        self._send_pending(ws)
        if ws.state is not OPEN and self.session is not None:
            self.session.peer_closing()

    def _too_large(self, ws: Protocol) -> None:
        """websockets refused a message over the limit (the parser counts every fragment, so
        nothing larger is ever assembled) and queued close 1009. Messages are answered in order,
        so that close waits: the connection handles it as a message over the limit after the
        ones before it (session.py: the ``too_large`` error, then close 1009 through close())."""
        self._fragments = None
        session = self.session
        if session is None or session.client.close_code is not None:
            return
        self._deferred_close = ws.data_to_send()
        session.receive(self.server.max_frame_bytes + 1)

    def _message(self, ws: Protocol, opcode: Opcode, data: BytesLike) -> None:
        session = self.session
        if session is None or session.client.close_code is not None:
            return
        if opcode is Opcode.BINARY:
            session.receive(len(data))
            return
        try:
            text = bytes(data).decode() if not isinstance(data, bytes) else data.decode()
        except UnicodeDecodeError:
            ws.fail(1007, "invalid UTF-8 in a text frame")
            return
        try:
            session.receive(text)
        except Exception:
            # A bug in handling one message must not kill the socket without a close frame.
            logger.exception("socket %s: message handling failed", session.number,
                             extra={"action": "socket_failed"})
            session.fail()

    # -- the session's side -----------------------------------------------------------------

    def _wake(self) -> None:
        """The fan-out's callback: frames are queued, or the client is closing."""
        if not self._scheduled:
            self._scheduled = True
            self.server.schedule_flush(self)

    def _hold_for_backlog(self, hold: bool) -> None:
        if hold:
            self.hold_reading(READ_HELD_BY_BACKLOG)
        else:
            self.release_reading(READ_HELD_BY_BACKLOG)

    def _number(self) -> int | str:
        return self.session.number if self.session is not None else "?"

