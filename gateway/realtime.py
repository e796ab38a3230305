"""The websocket endpoint ``/realtime``: admission, and one connection's subscriptions.

``Connection`` is the part that does not depend on how bytes reach the socket: it reads client
frames (subscribe with its replay, unsubscribe, ping) and queues frames in its outbox through the
fan-out. Two shells drive it:

- ``gateway/websocket.py``, the gateway's own websocket protocol under uvicorn (what ``pgflow
  serve`` and ``pgflow demo`` use): frames go to the transport as the shared bytes, with no
  task per socket while it is idle.
- ``AsgiConnection`` here, for an app mounted inside another ASGI app or served by another
  server: a raw ASGI endpoint that hands the server the prebuilt ``websocket.send`` message, a
  writer task draining the outbox.

Both close with the codes docs/protocol.md gives.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.datastructures import Headers, QueryParams
from starlette.types import Message, Receive, Scope, Send

from gateway.auth import Principal, bearer_token
from gateway.endpoints import error_status
from gateway.errors import (
    BadRequestError,
    ForbiddenError,
    RequestError,
    TooLargeError,
    TooManySubscriptionsError,
    UnauthorizedError,
)
from gateway.fanout import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TOKEN_EXPIRED,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN,
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
from gateway.wire import TextFrame
from pgflow.errors import DatabaseUnavailableError, PGFlowError, UnknownRunError

if TYPE_CHECKING:
    from gateway.app import Gateway

logger = logging.getLogger(__name__)

MAX_CLOSE_REASON = 120  # bytes; a close frame's reason is limited to 123


# -- admission --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Unavailable:
    """Turned away before the upgrade: an HTTP answer (or, where ASGI has none, a close)."""

    status: int
    close_code: int
    code: str
    message: str

    @property
    def body(self) -> bytes:
        return error_body(self.code, self.message)


@dataclass(frozen=True)
class Rejected:
    """Refused with a reason the client can read: accepted, one error frame, close 1008.

    Accepted first, because a browser reports a refused upgrade as a bare 1006.
    """

    error: RequestError

    @property
    def frame(self) -> str:
        return error_frame(self.error.code, str(self.error))

    @property
    def reason(self) -> str:
        return close_reason(f"{self.error.code}: {self.error}")


def admit(gateway: Gateway, headers: Headers,
          query_string: bytes) -> Principal | Unavailable | Rejected:
    """Whether a socket may open: capacity, Origin, token. Counts refusals by reason."""
    refused = gateway.metrics.sockets_refused
    if gateway.stopping or gateway.store is None:
        refused["stopping"] += 1
        return Unavailable(503, CLOSE_GOING_AWAY, "unavailable", "the gateway is not serving")
    if len(gateway.connections) >= gateway.socket_limit:
        refused["too_many_connections"] += 1
        return Unavailable(429, CLOSE_TRY_AGAIN, "too_many_connections",
                           "too many open sockets: retry later")
    origin = headers.get("origin")
    if origin is not None and not gateway.auth.origins.allows(origin):
        refused["origin"] += 1
        return Rejected(ForbiddenError(f"Origin {origin} may not open this socket"))
    try:
        token = QueryParams(query_string).get("token")
        if token is None:
            token = bearer_token(headers.get("authorization"))
        return gateway.auth.authenticate(token)
    except UnauthorizedError as exc:
        refused["unauthorized"] += 1
        return Rejected(exc)


def close_reason(reason: str) -> str:
    """A close frame's reason, cut to what the frame can carry."""
    return reason.encode()[:MAX_CLOSE_REASON].decode(errors="ignore")


# -- the connection, whatever carries it ------------------------------------------------------

class Connection:
    """One accepted socket: its client in the fan-out, its subscriptions and their replays.

    A shell feeds it client messages (``on_text``, ``on_binary``), delivers its outbox, calls
    ``took_outbox`` after taking it, and calls ``opened``/``closed`` around its life.
    """

    def __init__(self, gateway: Gateway, principal: Principal, number: int) -> None:
        self.gateway = gateway
        self.principal = principal
        self.number = number
        self.client = gateway.fanout.add_client(self._wake, name=f"ws-{number}")
        self.peer_gone = False
        self._room: asyncio.Future[None] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        # loop.time() since when the outbox has been waiting on the peer (a writer mid-batch,
        # a transport paused); None otherwise. Past the stall timeout: a peer that stopped
        # reading, dropped by the gateway's sweeper.
        self.sending_since: float | None = None

    def _wake(self) -> None:
        """The fan-out's callback: frames are queued, or the client is closing."""
        raise NotImplementedError

    def keepalive(self, now: float, interval: float, may_ping: bool) -> bool:
        """Called by the gateway's sweeper: pings a silent peer if ``may_ping``, drops one
        silent for twice the interval. True when it pinged. (ASGI: the server's own pings.)"""
        return False

    def opened(self) -> None:
        """The socket is accepted: count it, arm the token's expiry."""
        gateway = self.gateway
        gateway.connections.add(self)
        gateway.metrics.sockets_accepted += 1
        remaining = gateway.auth.expires_in(self.principal)
        if remaining is not None:
            self._expiry = asyncio.get_running_loop().call_later(max(remaining, 0.0),
                                                                 self._expire)

    def closed(self) -> None:
        """The socket is gone (or going): out of the fan-out and the gateway. Idempotent."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self._release_replay()
        self.gateway.fanout.remove_client(self.client)
        self.gateway.forget(self)

    def took_outbox(self) -> None:
        """The shell took the outbox: a replay waiting for room goes on, starved runs read on."""
        self._release_replay()
        client = self.client
        if client.starved:
            gateway = self.gateway
            for run_id in gateway.fanout.drained(client):
                gateway.relay_request_read(run_id)

    def _release_replay(self) -> None:
        """Wakes a replay waiting in ``_wait_for_room``."""
        room = self._room
        if room is not None and not room.done():
            room.set_result(None)

    def fail(self) -> None:
        """An unexpected error in this connection's code: close it, the client resumes."""
        self.gateway.fanout.close(self.client, CLOSE_INTERNAL,
                                  "internal error: resubscribe with since")

    def _expire(self) -> None:
        self._expiry = None
        self.gateway.fanout.close(self.client, CLOSE_TOKEN_EXPIRED,
                                  "token expired: reconnect with a fresh token")

    def _push(self, text: str) -> None:
        self.gateway.fanout.send(self.client, TextFrame(text), len(text))

    def _error(self, exc: PGFlowError, run_id: str | None = None) -> None:
        described = error_status(exc)
        code = described[0] if described is not None else "internal"
        if run_id is None and isinstance(exc, RequestError):
            run_id = exc.run_id
        self._push(error_frame(code, str(exc), run_id))

    async def _wait_for_room(self) -> None:
        """Waits until the outbox was taken: a replay goes at the socket's pace."""
        client = self.client
        while client.frames and client.close_code is None:
            self._room = asyncio.get_running_loop().create_future()
            try:
                await self._room
            finally:
                self._room = None

    # -- client messages --------------------------------------------------------------------

    def on_binary(self, size: int) -> None:
        if size > self.gateway.config.max_frame_bytes:
            self._too_large()
        else:
            self._error(BadRequestError("binary frames are not supported: send JSON text"))

    def on_text(self, text: str) -> Coroutine[Any, Any, None] | None:
        """Handles one client message; a subscribe returns its replay, for the shell to await
        before the next message (messages are handled in order)."""
        limit = self.gateway.config.max_frame_bytes
        if len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit):
            self._too_large()
            return None
        try:
            request = parse_client_frame(text)
        except RequestError as exc:
            self._error(exc)
            return None
        if request["type"] == "subscribe":
            return self._subscribe(request)
        if request["type"] == "unsubscribe":
            self.gateway.fanout.unsubscribe(self.client, request["run_id"])
            self._push(unsubscribed_frame(request["run_id"]))
        else:
            self._push(pong_frame(request["id"]))
        return None

    def _too_large(self) -> None:
        limit = self.gateway.config.max_frame_bytes
        self._error(TooLargeError(f"frames are limited to {limit} bytes"))
        self.gateway.fanout.close(self.client, CLOSE_TOO_BIG, "frame too large", discard=False)

    # -- subscribing ------------------------------------------------------------------------

    async def _subscribe(self, request: Subscribe) -> None:
        gateway = self.gateway
        fanout = gateway.fanout
        client = self.client
        run_id = request["run_id"]
        since = request["since"]
        if client.close_code is not None:
            return  # closed while this waited its turn
        if (run_id not in client.subscriptions
                and len(client.subscriptions) >= gateway.config.max_subscriptions):
            self._error(TooManySubscriptionsError(
                f"a socket may follow {gateway.config.max_subscriptions} runs: unsubscribe "
                "from finished ones"), run_id)
            return
        # Registered before the replay's query: what commits after that query's snapshot
        # arrives live and is held until the replay is applied.
        sub = fanout.subscribe(client, run_id, since)
        page = gateway.read_page
        store = gateway.require_store()
        epoch = fanout.epoch
        try:
            replay = await store.get_run_replay(uuid.UUID(run_id), since,
                                                min(since + page, MAX_SEQ),
                                                max_bytes=fanout.soft_bytes)
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
        truncated = replay.truncated
        del replay
        frames = gateway.relay.frames if gateway.relay is not None else None
        while True:
            gateway.metrics.log_reads += 1
            gateway.metrics.events_in_log += len(rows)
            # Each read stops at the outbox's soft limit in bytes (in SQL): a replay holds
            # about one outbox's worth of events, however large they are.
            complete = len(rows) < page and not truncated
            items = log_items(run_id, rows, frames)
            del rows  # nothing of a page outlives it but what the outbox took
            behind = fanout.apply_replay(sub, items, complete=complete, epoch=epoch)
            del items
            if sub.replayed or not fanout.is_current(sub):
                break
            # More pages, or this one stopped at the outbox's soft limit: read on from
            # last_seq once the writer has taken what is queued.
            await self._wait_for_room()
            if not fanout.is_current(sub):
                return
            epoch = fanout.epoch
            try:
                rows, truncated = await store.get_run_events_json(
                    uuid.UUID(run_id), sub.last_seq, min(sub.last_seq + page, MAX_SEQ),
                    max_bytes=fanout.soft_bytes,
                )
            except DatabaseUnavailableError as exc:
                fanout.unsubscribe(client, run_id)
                self._error(exc, run_id)
                return
        if behind:
            gateway.relay_request_read(run_id)


# -- the ASGI shell ---------------------------------------------------------------------------

class RealtimeEndpoint:
    """ASGI app of ``/realtime`` (under a server other than the gateway's own protocol)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            raise RuntimeError(f"RealtimeEndpoint serves websockets, not {scope['type']!r}")
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        gateway = self.gateway
        verdict = admit(gateway, Headers(scope=scope), scope.get("query_string", b""))
        if isinstance(verdict, Unavailable):
            await _refuse(scope, send, verdict)
        elif isinstance(verdict, Rejected):
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": verdict.frame})
            await send({"type": "websocket.close", "code": CLOSE_POLICY, "reason": verdict.reason})
        else:
            number = next(gateway.socket_numbers)
            await AsgiConnection(gateway, receive, send, verdict, number).run()


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


class AsgiConnection(Connection):
    """A connection driven through ASGI: reads in the server's task, writes in its own."""

    def __init__(self, gateway: Gateway, receive: Receive, send: Send, principal: Principal,
                 number: int) -> None:
        super().__init__(gateway, principal, number)
        self.receive = receive
        self.send = send
        self._waiter: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Reads in this (the server's) task, writes in another; the first to end stops both.

        When the writer ends, it cancels this task's read; that cancellation is ours and
        absorbed (``uncancel``), any other propagates.
        """
        gateway = self.gateway
        client = self.client
        try:
            await self.send({"type": "websocket.accept"})
        except BaseException:
            self.closed()
            raise
        self.opened()
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
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            code, reason = client.close_code, client.close_reason
            self.closed()
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
        metrics = self.gateway.metrics
        loop = asyncio.get_running_loop()
        try:
            while True:
                if client.frames:
                    batch = client.take()
                    self.took_outbox()
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
                self.on_binary(len(message.get("bytes") or b""))
                continue
            replay = self.on_text(text)
            if replay is not None:
                await replay

    async def _close(self, code: int, reason: str) -> None:
        try:
            async with asyncio.timeout(self.gateway.config.close_timeout):
                await self.send({"type": "websocket.close", "code": code,
                                 "reason": close_reason(reason)})
        except TimeoutError:
            aborted = abort_transport(self.send)
            logger.info("socket %s: close frame timed out%s", self.number,
                        ", connection aborted" if aborted else "",
                        extra={"action": "socket_close_timeout"})
        except OSError:
            pass  # the peer went away first
