"""The gateway's own websocket protocol for uvicorn: ``/realtime`` without ASGI in between.

``uvicorn.Config(ws=RealtimeServer(gateway))`` hands every websocket upgrade to this module
instead of to an ASGI app. Why (docs/design/fanout.md has the measurements):

- **Shared bytes, one write per burst.** A frame is encoded once (``wire.TextFrame``) and the
  same bytes go to every socket's transport; frames queued during one notification's fan-out
  leave in one ``transport.write`` per socket, from one callback for all sockets. No task wakes
  up per socket per event.
- **Small idle sockets.** No task, queue or event per socket: an idle socket is its transport,
  a ``RealtimeProtocol``, websockets' frame parser and the fan-out's ``Client``.
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
from typing import TYPE_CHECKING, Any, cast

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

from gateway.fanout import CLOSE_GOING_AWAY, CLOSE_POLICY
from gateway.protocol import error_body
from gateway.realtime import Rejected, Unavailable, admit, close_reason
from gateway.socket_connection import (
    MAX_BACKLOG,
    READ_HELD_BY_WRITES,
    WRITE_PIECE,
    DirectConnection,
)
from gateway.wire import TextFrame

if TYPE_CHECKING:
    from gateway.app import Gateway

logger = logging.getLogger(__name__)

PATH = "/realtime"
_PING = Frame(Opcode.PING, b"pgflow").serialize(mask=False)
_PONG_HEADER = 0x8A  # FIN + PONG: the first byte of every pong websockets queues (never deflated)

# websockets logs every handshake at INFO ("connection open"): one line per socket is noise.
_frames_logger = logging.getLogger("gateway.websocket.frames")
if _frames_logger.level == logging.NOTSET:
    _frames_logger.setLevel(logging.WARNING)


class RealtimeServer:
    """uvicorn's websocket protocol factory for one gateway, and the fan-out's write scheduler.

    Connections whose outbox went from empty to non-empty are flushed together in one loop
    callback: every frame queued by one notification's fan-out leaves in one write per socket.
    """

    def __init__(self, gateway: Gateway, *, max_message_bytes: int) -> None:
        self.gateway = gateway
        self.max_message_bytes = max_message_bytes
        self.deflate_min_bytes = gateway.config.deflate_min_bytes
        self.deflate_max_bytes = gateway.config.deflate_max_bytes
        self._ready: list[DirectConnection] = []
        gateway.metrics.observe(
            "pgflow_socket_buffered_bytes", "gauge",
            "bytes waiting for sockets: outboxes and transport buffers, control frames included",
            self.buffered_bytes)

    def buffered_bytes(self) -> int:
        """What every socket holds for its peer: its outbox and its transport's buffer."""
        total = 0
        for connection in list(self.gateway.connections):
            total += connection.client.queued_bytes
            if isinstance(connection, DirectConnection):
                total += connection.protocol.buffered_bytes()
        return total

    def __call__(self, config: Any, server_state: Any, app_state: Any,
                 _loop: asyncio.AbstractEventLoop | None = None) -> RealtimeProtocol:
        return RealtimeProtocol(self, server_state.connections)

    def schedule_flush(self, connection: DirectConnection) -> None:
        if not self._ready:
            asyncio.get_running_loop().call_soon(self._flush)
        self._ready.append(connection)

    def _flush(self) -> None:
        ready = self._ready
        self._ready = []
        written = 0
        for connection in ready:
            written += connection.flush()
        self.gateway.metrics.frames_out += written


class RealtimeProtocol(asyncio.Protocol):
    """One socket's bytes: the handshake, client frames in, shared frames out, the close."""

    __slots__ = ("_closing_timer", "_deferred_close", "_fragments", "_handshake", "_read_holds",
                 "connection", "connections", "deflate_from", "last_heard", "pinged_at", "server",
                 "transport", "write_paused", "ws")

    def __init__(self, server: RealtimeServer, connections: set[Any]) -> None:
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
        self.connection: DirectConnection | None = None
        # None: no permessage-deflate; else frames this long or longer go compressed.
        self.deflate_from: int | None = None
        self.write_paused = False
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
        connection = self.connection
        if connection is not None:
            connection.peer_gone = True
            connection.closed()
        self._handshake = None

    def pause_writing(self) -> None:
        self.write_paused = True
        # Nothing more is read from a peer that does not read: what it sends (pings, messages)
        # would only queue more answers behind the ones it is not taking.
        self.hold_reading(READ_HELD_BY_WRITES)
        if self.connection is not None:
            self.connection.sending_since = asyncio.get_running_loop().time()

    def resume_writing(self) -> None:
        self.write_paused = False
        connection = self.connection
        if connection is not None:
            connection.sending_since = None
            self.server.gateway.metrics.frames_out += connection.flush()
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
        connection = self.connection
        if connection is not None and connection.client.close_code is None:
            self.server.gateway.fanout.close(connection.client, CLOSE_GOING_AWAY,
                                             "gateway shutting down")
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
                self.server.gateway.config.close_timeout, self._close_timed_out)

    def _close_timed_out(self) -> None:
        self._closing_timer = None
        connection = self.connection
        logger.info("socket %s: close frame timed out, connection aborted",
                    connection.number if connection is not None else "?",
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
                        self.connection.number if self.connection is not None else "?",
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
        gateway = self.server.gateway
        path, _, query = request.path.partition("?")
        if path != PATH:
            self._refuse(handshake, Unavailable(404, CLOSE_POLICY, "not_found",
                                                f"no websocket at {path}"))
            return
        headers = StarletteHeaders(raw=[
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in request.headers.raw_items()
        ])
        verdict = admit(gateway, headers, query.encode("latin-1"))
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
                                max_size=gateway.config.max_frame_bytes, logger=_frames_logger)
        ws.extensions = handshake.extensions
        for extension in ws.extensions:
            # Our shared compressor uses a 12-bit window: a client that limits ours below that
            # gets plain frames (allowed per message).
            if isinstance(extension, PerMessageDeflate) and extension.local_max_window_bits >= 12:
                self.deflate_from = self.server.deflate_min_bytes
        if isinstance(verdict, Rejected):
            self.write(TextFrame(verdict.frame).wire(False))
            self.close(CLOSE_POLICY, verdict.reason)
            return
        connection = self.connection = DirectConnection(
            gateway, verdict, next(gateway.socket_numbers), self
        )
        connection.opened()

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
        connection = self.connection
        if ws.state is not OPEN and connection is not None:
            connection.peer_closing()

    def _too_large(self, ws: Protocol) -> None:
        """websockets refused a message over the limit (the parser counts every fragment, so
        nothing larger is ever assembled) and queued close 1009. Messages are answered in order,
        so that close waits: the connection handles it as a message over the limit after the
        ones before it (realtime.py: the ``too_large`` error, then close 1009 through close())."""
        self._fragments = None
        connection = self.connection
        if connection is None or connection.client.close_code is not None:
            return
        self._deferred_close = ws.data_to_send()
        connection.receive(self.server.gateway.config.max_frame_bytes + 1)

    def _message(self, ws: Protocol, opcode: Opcode, data: BytesLike) -> None:
        connection = self.connection
        if connection is None or connection.client.close_code is not None:
            return
        if opcode is Opcode.BINARY:
            connection.receive(len(data))
            return
        try:
            text = bytes(data).decode() if not isinstance(data, bytes) else data.decode()
        except UnicodeDecodeError:
            ws.fail(1007, "invalid UTF-8 in a text frame")
            return
        try:
            connection.receive(text)
        except Exception:
            # A bug in handling one message must not kill the socket without a close frame.
            logger.exception("socket %s: message handling failed", connection.number,
                             extra={"action": "socket_failed"})
            connection.fail()


__all__ = ["MAX_BACKLOG", "PATH", "WRITE_PIECE", "DirectConnection", "RealtimeProtocol",
           "RealtimeServer"]
