"""The gateway's open sockets, whatever carries them: admission, numbering, their sessions,
the sweeper that drops stalled peers, and closing them all at shutdown.

Both transports (``native_socket.py``, ``asgi_socket.py``) register here; nothing here touches
bytes: a transport is an ``OpenSocket``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
from collections.abc import Callable
from typing import Protocol

from starlette.datastructures import Headers

from gateway.auth import Authenticator, Principal
from gateway.config import GatewayConfig
from gateway.fanout import Fanout
from gateway.metrics import Metrics
from gateway.session import LogReads, Rejected, Session, SessionLimits, Unavailable, admit
from gateway.wire import CLOSE_GOING_AWAY

logger = logging.getLogger(__name__)

SWEEP_SLICE = 500  # sockets the sweeper examines between yields to the event loop


class OpenSocket(Protocol):
    """A transport's socket, as the registry sees it."""

    # loop.time() since when the outbox has been waiting on the peer (a writer mid-batch, a
    # transport paused); None otherwise. Past the stall timeout: dropped by the sweeper.
    sending_since: float | None

    def keepalive(self, now: float, interval: float, may_ping: bool) -> bool:
        """Pings a silent peer if ``may_ping``, drops one silent for twice the interval. True
        when it pinged. (ASGI: the server pings its sockets itself.)"""

    def buffered_bytes(self) -> int:
        """Bytes in the transport's buffer, not yet taken by the kernel."""


class Sockets:
    """The registry of open sockets. ``serving()`` says whether new ones are welcome."""

    def __init__(self, fanout: Fanout, auth: Authenticator, reads: LogReads, metrics: Metrics,
                 config: GatewayConfig, serving: Callable[[], bool]) -> None:
        self.fanout = fanout
        self.auth = auth
        self.reads = reads
        self.metrics = metrics
        self.config = config
        self.serving = serving
        self.limits = SessionLimits(config.max_frame_bytes, config.max_subscriptions)
        # Sockets admitted at once: --max-sockets, lowered by GatewayServer to leave HTTP a
        # share of the connection cap.
        self.limit = config.max_sockets
        # Each open socket's session, and the timer of its token's expiry.
        self.open: dict[OpenSocket, Session] = {}
        # Only sockets whose token expires: most have none, and this costs nothing per socket.
        self._expiries: dict[OpenSocket, asyncio.TimerHandle] = {}
        self._numbers = itertools.count(1)  # names sockets in the log
        self._idle: asyncio.Event | None = None

    def admit(self, headers: Headers, query_string: bytes) -> Principal | Unavailable | Rejected:
        return admit(headers, query_string, serving=self.serving(), open_now=len(self.open),
                     limit=self.limit, auth=self.auth, refused=self.metrics.sockets_refused)

    def new_session(self, principal: Principal, wake: Callable[[], object],
                    hold_reading: Callable[[bool], None] | None = None) -> Session:
        return Session(next(self._numbers), principal, fanout=self.fanout, auth=self.auth,
                       reads=self.reads, limits=self.limits, wake=wake,
                       hold_reading=hold_reading)

    def opened(self, sock: OpenSocket, session: Session) -> None:
        """The socket is accepted: count it, arm the token's expiry."""
        self.metrics.sockets_accepted += 1
        remaining = self.auth.expires_in(session.principal)
        if remaining is not None:
            self._expiries[sock] = asyncio.get_running_loop().call_later(
                max(remaining, 0.0), session.expire)
        self.open[sock] = session

    def closed(self, sock: OpenSocket, session: Session) -> None:
        """The socket is gone (or going): out of the fan-out and the registry. Idempotent."""
        self.open.pop(sock, None)
        expiry = self._expiries.pop(sock, None)
        if expiry is not None:
            expiry.cancel()
        session.closed()
        if not self.open and self._idle is not None:
            self._idle.set()

    async def close_all(self, code: int = CLOSE_GOING_AWAY,
                        reason: str = "gateway shutting down") -> None:
        """Closes the open sockets, waiting up to the close timeout for them to go."""
        if not self.open:
            return
        self._idle = asyncio.Event()
        for session in list(self.open.values()):
            session.close(code, reason)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.close_timeout + 1.0):
                await self._idle.wait()

    def buffered_bytes(self) -> int:
        """What every socket holds for its peer: its outbox and its transport's buffer."""
        return sum(session.client.queued_bytes + sock.buffered_bytes()
                   for sock, session in list(self.open.items()))

    async def sweep(self) -> None:
        """Drops sockets whose peer stopped reading for the stall timeout (1013), and pings
        silent ones (the native transport; uvicorn pings its ASGI sockets itself).

        The outbox bound catches a stalled peer only while live events flow; this catches it
        when nothing new is queued, or when all it waits for comes from the log. The sweep
        yields to the loop every ``SWEEP_SLICE`` sockets, and spreads pings over the interval
        (at most twice an even share per sweep): each ping is a syscall, and 10,000 sockets
        opened together would otherwise all be pinged in one ~75 ms burst that delays events.
        """
        timeout = self.config.socket_stall_timeout
        ping_interval = self.config.socket_ping_interval
        period = max(0.05, min(1.0, timeout / 4, ping_interval / 4 or 1.0))
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            socks = list(self.open)  # keys only: no tuple per socket per sweep
            budget = 0
            if ping_interval > 0:
                budget = max(64, math.ceil(2 * len(socks) * period / ping_interval))
            now = loop.time()
            for index, sock in enumerate(socks):
                if index and index % SWEEP_SLICE == 0:
                    await asyncio.sleep(0)
                    now = loop.time()
                since = sock.sending_since
                if since is not None and now - since > timeout:
                    session = self.open.get(sock)
                    if session is not None:  # it may have closed while the sweep yielded
                        logger.info("socket %s stalled for %.1fs, dropping it", session.number,
                                    now - since, extra={"action": "socket_stalled"})
                        self.fanout.drop(session.client)
                if ping_interval > 0 and sock.keepalive(now, ping_interval, budget > 0):
                    budget -= 1
