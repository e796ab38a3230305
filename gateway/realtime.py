"""The websocket endpoint ``/realtime``: one connection's reader, writer and subscriptions.

A raw ASGI app rather than a Starlette ``WebSocket`` session: the writer hands the server the
prebuilt ``websocket.send`` message the fan-out shares between sockets, without a wrapper per
frame (docs/design/fanout.md has the measurements). Each connection reads (client frames,
subscriptions, replays) in the server's task and writes (drains its outbox) in a task of its
own; the first to finish ends the other, then the close frame goes out with the code
docs/protocol.md gives.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from typing import TYPE_CHECKING

from starlette.datastructures import Headers, QueryParams
from starlette.types import Message, Receive, Scope, Send

from gateway.auth import Principal, bearer_token
from gateway.endpoints import error_status
from gateway.errors import (
    BadRequestError,
    DatabaseUnavailableError,
    ForbiddenError,
    PGFlowError,
    RequestError,
    TooLargeError,
    TooManySubscriptionsError,
    UnauthorizedError,
    UnknownRunError,
)
from gateway.fanout import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TOKEN_EXPIRED,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN,
    send_message,
)
from gateway.listener import log_items
from gateway.protocol import (
    MAX_SEQ,
    Subscribe,
    error_body,
    error_frame,
    parse_client_frame,
    pong_frame,
    subscribed_frame,
    unsubscribed_frame,
)

if TYPE_CHECKING:
    from gateway.app import Gateway

logger = logging.getLogger(__name__)

MAX_CLOSE_REASON = 120  # bytes; a close frame's reason is limited to 123


class RealtimeEndpoint:
    """ASGI app of ``/realtime``: admission (capacity, Origin, token), then a ``Connection``."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._numbers = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            raise RuntimeError(f"RealtimeEndpoint serves websockets, not {scope['type']!r}")
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        gateway = self.gateway
        if gateway.stopping or gateway.store is None:
            gateway.metrics.sockets_refused["stopping"] += 1
            await _refuse(scope, send, 503, CLOSE_GOING_AWAY, "unavailable",
                          "the gateway is not serving")
            return
        if len(gateway.connections) >= gateway.config.max_sockets:
            gateway.metrics.sockets_refused["too_many_connections"] += 1
            await _refuse(scope, send, 429, CLOSE_TRY_AGAIN, "too_many_connections",
                          "too many open sockets: retry later")
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is not None and not gateway.origin_allowed(origin, headers.get("host")):
            gateway.metrics.sockets_refused["origin"] += 1
            await _reject(send, ForbiddenError(f"Origin {origin} may not open this socket"))
            return
        try:
            token = QueryParams(scope.get("query_string", b"")).get("token")
            if token is None:
                token = bearer_token(headers.get("authorization"))
            principal = gateway.auth.authenticate(token)
        except UnauthorizedError as exc:
            gateway.metrics.sockets_refused["unauthorized"] += 1
            await _reject(send, exc)
            return
        await Connection(gateway, receive, send, principal, next(self._numbers)).run()


async def _refuse(scope: Scope, send: Send, status: int, close_code: int, code: str,
                  message: str) -> None:
    """Turns a socket away before accepting it: an HTTP answer where the server supports one."""
    if "websocket.http.response" in scope.get("extensions", {}):
        body = error_body(code, message)
        await send({"type": "websocket.http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"retry-after", b"1"),
        ]})
        await send({"type": "websocket.http.response.body", "body": body})
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": close_code, "reason": message})


async def _reject(send: Send, exc: RequestError) -> None:
    """Refuses a socket with a reason the client can read: the error, then close 1008.

    Accepted first, because a browser reports a refused upgrade as a bare 1006.
    """
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": error_frame(exc.code, str(exc))})
    reason = f"{exc.code}: {exc}".encode()[:MAX_CLOSE_REASON].decode(errors="ignore")
    await send({"type": "websocket.close", "code": CLOSE_POLICY, "reason": reason})


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


class Connection:
    """One accepted socket."""

    def __init__(self, gateway: Gateway, receive: Receive, send: Send, principal: Principal,
                 number: int) -> None:
        self.gateway = gateway
        self.receive = receive
        self.send = send
        self.principal = principal
        self.number = number
        self.client = gateway.fanout.add_client(self._wake, name=f"ws-{number}")
        self.peer_gone = False
        self._waiter: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        # loop.time() of the writer's last progress (a batch begun, a frame sent); None while
        # idle. No progress within the stall timeout means a peer that stopped reading.
        self.sending_since: float | None = None
        self._replay_page = gateway.read_page

    async def run(self) -> None:
        """Reads in this (the server's) task, writes in another; the first to end stops both.

        The reader runs here rather than in a task of its own: one task fewer per socket
        (docs/design/fanout.md, memory). When the writer ends, it cancels this task's read;
        that cancellation is ours and absorbed (``uncancel``), any other propagates.
        """
        gateway = self.gateway
        client = self.client
        gateway.connections.add(self)
        try:
            await self.send({"type": "websocket.accept"})
        except BaseException:
            gateway.fanout.remove_client(client)
            gateway.forget(self)
            raise
        gateway.metrics.sockets_accepted += 1
        loop = asyncio.get_running_loop()
        expiry = None
        remaining = gateway.auth.expires_in(self.principal)
        if remaining is not None:
            expiry = loop.call_later(max(remaining, 0.0), self._expire)
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
                await asyncio.wait((writer,), timeout=gateway.config.close_timeout)
        finally:
            if expiry is not None:
                expiry.cancel()
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            code, reason = client.close_code, client.close_reason
            gateway.fanout.remove_client(client)
            gateway.forget(self)
        if not writer.cancelled() and writer.exception() is not None:
            logger.error("socket %s: writer failed", self.number, exc_info=writer.exception(),
                         extra={"action": "socket_failed"})
            failed = True
        if failed:
            code, reason = CLOSE_INTERNAL, "internal error: resubscribe with since"
        if not self.peer_gone:
            await self._close(code if code is not None else CLOSE_NORMAL, reason)

    # -- writing ----------------------------------------------------------------------------

    def _wake(self) -> None:
        """The fan-out's callback: frames are queued, or the client is closing."""
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
        gateway = self.gateway
        client = self.client
        send = self.send
        metrics = gateway.metrics
        loop = asyncio.get_running_loop()
        try:
            while True:
                if client.frames:
                    batch = client.take()
                    room = self._room
                    if room is not None and not room.done():
                        room.set_result(None)
                    if client.starved:
                        for run_id in gateway.fanout.drained(client):
                            gateway.relay_request_read(run_id)
                    self.sending_since = loop.time()
                    # Consecutive sends: none of them yields unless the transport is full.
                    for message in batch:
                        try:
                            await send(message)
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
                    del batch, message  # an idle socket keeps no frame alive
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

    async def _close(self, code: int, reason: str) -> None:
        reason = reason.encode()[:MAX_CLOSE_REASON].decode(errors="ignore")
        try:
            async with asyncio.timeout(self.gateway.config.close_timeout):
                await self.send({"type": "websocket.close", "code": code, "reason": reason})
        except TimeoutError:
            aborted = abort_transport(self.send)
            logger.info("socket %s: close frame timed out%s", self.number,
                        ", connection aborted" if aborted else "",
                        extra={"action": "socket_close_timeout"})
        except OSError:
            pass  # the peer went away first

    def _expire(self) -> None:
        self.gateway.fanout.close(self.client, CLOSE_TOKEN_EXPIRED,
                                  "token expired: reconnect with a fresh token")

    def _push(self, text: str) -> None:
        self.gateway.fanout.send(self.client, send_message(text), len(text))

    def _error(self, exc: PGFlowError, run_id: str | None = None) -> None:
        described = error_status(exc)
        code = described[0] if described is not None else "internal"
        if run_id is None and isinstance(exc, RequestError):
            run_id = exc.run_id
        self._push(error_frame(code, str(exc), run_id))

    async def _wait_for_room(self) -> None:
        """Waits until the writer has taken the outbox: a replay goes at the socket's pace."""
        client = self.client
        while client.frames and client.close_code is None:
            self._room = asyncio.get_running_loop().create_future()
            try:
                await self._room
            finally:
                self._room = None

    # -- reading ----------------------------------------------------------------------------

    async def _read(self) -> None:
        receive = self.receive
        client = self.client
        limit = self.gateway.config.max_frame_bytes
        while client.close_code is None:
            message: Message = await receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                self.peer_gone = True
                return
            if kind != "websocket.receive":
                continue
            text = message.get("text")
            if text is None:
                if len(message.get("bytes") or b"") > limit:
                    self._too_large(limit)
                    return
                self._error(BadRequestError("binary frames are not supported: send JSON text"))
                continue
            if len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit):
                self._too_large(limit)
                return
            try:
                request = parse_client_frame(text)
            except RequestError as exc:
                self._error(exc)
                continue
            if request["type"] == "subscribe":
                await self._subscribe(request)
            elif request["type"] == "unsubscribe":
                self.gateway.fanout.unsubscribe(client, request["run_id"])
                self._push(unsubscribed_frame(request["run_id"]))
            else:
                self._push(pong_frame(request["id"]))

    def _too_large(self, limit: int) -> None:
        self._error(TooLargeError(f"frames are limited to {limit} bytes"))
        self.gateway.fanout.close(self.client, CLOSE_TOO_BIG, "frame too large", discard=False)

    async def _subscribe(self, request: Subscribe) -> None:
        gateway = self.gateway
        fanout = gateway.fanout
        client = self.client
        run_id = request["run_id"]
        since = request["since"]
        if (run_id not in client.subscriptions
                and len(client.subscriptions) >= gateway.config.max_subscriptions):
            self._error(TooManySubscriptionsError(
                f"a socket may follow {gateway.config.max_subscriptions} runs: unsubscribe "
                "from finished ones"), run_id)
            return
        # Registered before the replay's query: what commits after that query's snapshot
        # arrives live and is held until the replay is applied.
        sub = fanout.subscribe(client, run_id, since)
        page = self._replay_page
        store = gateway.require_store()
        epoch = fanout.epoch
        try:
            replay = await store.get_run_replay(uuid.UUID(run_id), since,
                                                min(since + page, MAX_SEQ))
            if replay is None:
                raise UnknownRunError(f"unknown run {run_id}")
            gateway.auth.check_run(self.principal, replay.flow_slug, replay.owner, run_id)
        except PGFlowError as exc:
            if fanout.is_current(sub):
                fanout.unsubscribe(client, run_id)
            self._error(exc, run_id)
            return
        self._push(subscribed_frame(run_id, replay.last_seq))
        rows = replay.events
        while True:
            gateway.metrics.log_reads += 1
            gateway.metrics.events_in_log += len(rows)
            complete = len(rows) < page
            behind = fanout.apply_replay(sub, log_items(rows), complete=complete, epoch=epoch)
            if sub.replayed or not fanout.is_current(sub):
                break
            # More pages, or this one stopped at the outbox's soft limit: read on from
            # last_seq once the writer has taken what is queued.
            await self._wait_for_room()
            if not fanout.is_current(sub):
                return
            epoch = fanout.epoch
            try:
                rows = await store.get_run_events_json(
                    uuid.UUID(run_id), sub.last_seq, min(sub.last_seq + page, MAX_SEQ)
                )
            except DatabaseUnavailableError as exc:
                fanout.unsubscribe(client, run_id)
                self._error(exc, run_id)
                return
        if behind:
            gateway.relay_request_read(run_id)
