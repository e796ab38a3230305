"""The ASGI transport of ``/realtime``: the gateway mounted in another app, or served by a
server other than the native transport (``native_socket.py``).

A raw ASGI endpoint (past Starlette's per-message exception wrapper) that hands the server the
prebuilt ``websocket.send`` message of each shared frame, a writer task draining the outbox.
It closes with the codes docs/reference/websocket.md gives.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.datastructures import Headers
from starlette.types import Message, Receive, Scope, Send

from gateway.auth import Principal
from gateway.session import Rejected, Unavailable
from gateway.sockets import Sockets
from gateway.wire import CLOSE_INTERNAL, CLOSE_NORMAL, CLOSE_POLICY, close_reason

logger = logging.getLogger(__name__)


class AsgiSocketEndpoint:
    """ASGI app of ``/realtime`` (under a server other than the native transport)."""

    def __init__(self, sockets: Sockets) -> None:
        self.sockets = sockets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            raise RuntimeError(f"AsgiSocketEndpoint serves websockets, not {scope['type']!r}")
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        verdict = self.sockets.admit(Headers(scope=scope), scope.get("query_string", b""))
        if isinstance(verdict, Unavailable):
            await _refuse(scope, send, verdict)
        elif isinstance(verdict, Rejected):
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": verdict.frame})
            await send({"type": "websocket.close", "code": CLOSE_POLICY, "reason": verdict.reason})
        else:
            await AsgiSocket(self.sockets, receive, send, verdict).run()


async def _refuse(scope: Scope, send: Send, refusal: Unavailable) -> None:
    """Turns a socket away before accepting it: an HTTP answer where the server supports one."""
    if "websocket.http.response" in scope.get("extensions", {}):
        body = refusal.body
        await send({"type": "websocket.http.response.start", "status": refusal.status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"retry-after", b"1"),
        ]})
        await send({"type": "websocket.http.response.body", "body": body})
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": refusal.close_code, "reason": refusal.message})


def abort_transport(send: Send) -> bool:
    """Drops the TCP connection under ``send`` when the server lets us reach it.

    ASGI has no abort: a peer that stopped reading never lets a close frame out, and closing the
    transport would wait for it forever. uvicorn's protocols expose their transport; elsewhere
    this does nothing and the server's own timeouts apply.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    abort = getattr(transport, "abort", None)
    if callable(abort):
        abort()
        return True
    return False


class AsgiSocket:
    """A socket driven through ASGI: reads in the server's task, writes in its own."""

    def __init__(self, sockets: Sockets, receive: Receive, send: Send,
                 principal: Principal) -> None:
        self.sockets = sockets
        self.receive = receive
        self.send = send
        self.session = sockets.new_session(principal, self._wake, self._hold_reading)
        self.client = self.session.client
        self.number = self.session.number
        self.close_timeout = sockets.config.close_timeout
        self.sending_since: float | None = None  # see sockets.OpenSocket
        self.peer_gone = False
        self._waiter: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._readable: asyncio.Event | None = None  # set: read on (cleared: backlog full)

    def keepalive(self, now: float, interval: float, may_ping: bool) -> bool:
        return False  # the server pings its ASGI sockets itself

    def buffered_bytes(self) -> int:
        return 0  # the server's buffers are out of reach

    def _hold_reading(self, hold: bool) -> None:
        if self._readable is None:
            self._readable = asyncio.Event()
        if hold:
            self._readable.clear()
        else:
            self._readable.set()

    async def run(self) -> None:
        """Reads in this (the server's) task, writes in another; the first to end stops both.

        When the writer ends, it cancels this task's read; that cancellation is ours and
        absorbed (``uncancel``), any other propagates.
        """
        client = self.client
        try:
            await self.send({"type": "websocket.accept"})
        except BaseException:
            self.session.closed()
            raise
        self.sockets.opened(self, self.session)
        handler = asyncio.current_task()
        reading = True
        stopped_by_writer = False

        def writer_done(_: object) -> None:
            nonlocal stopped_by_writer
            if reading and handler is not None:
                stopped_by_writer = True
                handler.cancel()

        writer = self._writer = asyncio.create_task(
            self._write(), name=f"pgflow-ws-{self.number}-writer"
        )
        writer.add_done_callback(writer_done)
        failed = False
        try:
            try:
                await self._read()
            except asyncio.CancelledError:
                if not stopped_by_writer or (handler is not None and handler.uncancel() > 0):
                    raise
            except Exception:
                logger.exception("socket %s: reader failed", self.number,
                                 extra={"action": "socket_failed"})
                failed = True
            finally:
                reading = False
            if not writer.done() and client.close_code is not None and not self.peer_gone:
                # The reader closes after an explanation (1009): let the writer send it first.
                await asyncio.wait((writer,), timeout=self.close_timeout)
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            code, reason = client.close_code, client.close_reason
            self.sockets.closed(self, self.session)
        if not writer.cancelled() and writer.exception() is not None:
            logger.error("socket %s: writer failed", self.number, exc_info=writer.exception(),
                         extra={"action": "socket_failed"})
            failed = True
        if failed:
            code, reason = CLOSE_INTERNAL, "internal error: resubscribe with since"
        if not self.peer_gone:
            await self._close(code if code is not None else CLOSE_NORMAL, reason)

    def _wake(self) -> None:
        client = self.client
        if client.close_code is not None and not client.frames:
            # Closing without a flush: abandon even a send stuck on a peer that stopped reading.
            writer = self._writer
            if writer is not None and not writer.done():
                writer.cancel()
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _write(self) -> None:
        client = self.client
        send = self.send
        metrics = self.sockets.metrics
        loop = asyncio.get_running_loop()
        try:
            while True:
                if client.frames:
                    batch = client.take()
                    self.session.took_outbox()
                    self.sending_since = loop.time()
                    # Consecutive sends: none of them yields unless the transport is full.
                    for frame in batch:
                        try:
                            await send(frame.asgi)
                        except RuntimeError:
                            # The socket was closed under us (dropped as too slow): the server
                            # refuses sends after a close. The client resumes with since.
                            if client.close_code is None:
                                raise
                            return
                        # Progress is per frame: a long backlog that keeps moving is not a stall.
                        self.sending_since = loop.time()
                    self.sending_since = None
                    metrics.frames_out += len(batch)
                    del batch, frame  # an idle socket keeps no frame alive
                    continue
                if client.close_code is not None:
                    return
                self._waiter = loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
        except OSError:  # uvicorn's ClientDisconnected: the peer is gone
            self.peer_gone = True

    async def _read(self) -> None:
        receive = self.receive
        client = self.client
        session = self.session
        while client.close_code is None:
            readable = self._readable
            if readable is not None and not readable.is_set():
                await readable.wait()  # messages wait behind a replay: read no more for now
                continue
            message: Message = await receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                self.peer_gone = True
                return
            if kind != "websocket.receive":
                continue
            text = message.get("text")
            session.receive(text if text is not None else len(message.get("bytes") or b""))

    async def _close(self, code: int, reason: str) -> None:
        try:
            async with asyncio.timeout(self.close_timeout):
                await self.send({"type": "websocket.close", "code": code,
                                 "reason": close_reason(reason)})
        except TimeoutError:
            aborted = abort_transport(self.send)
            logger.info("socket %s: close frame timed out%s", self.number,
                        ", connection aborted" if aborted else "",
                        extra={"action": "socket_close_timeout"})
        except OSError:
            pass  # the peer went away first
