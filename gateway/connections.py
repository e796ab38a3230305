"""Connection admission: a cap on open TCP connections below the descriptor limit, a deadline
for every request, and cheap refusals past the cap.

uvicorn accepts every connection and never times out one that sends nothing: its keep-alive
timeout starts after a response, and any byte received cancels it. Idle connections pile up
until ``accept()`` fails with EMFILE; asyncio then logs "socket.accept() out of system
resource" up to ``backlog`` times per loop iteration, and ``/healthz`` waits in the listen queue
forever. Here, for the connections uvicorn tracks (HTTP and websockets alike):

- **A cap** (``--max-connections``; by default what ``RLIMIT_NOFILE`` leaves after the database
  connections, files and accept bursts). A connection that arrives at the cap closes the one that
  has waited longest for a request (it never sent one, or sits idle between requests); when none
  waits, the newcomer gets a 503 and is closed. So a fresh ``/healthz`` always gets in past
  connections that hold a slot without asking anything.
- **A request deadline** (``--request-timeout``): a connection delivers a complete request,
  headers and body, within that time of opening or of its previous response, or it is closed
  (with a 408 if it had started one). A websocket upgrade is a request, so an unfinished
  handshake is timed out the same way; after the upgrade the socket's own pings take over.
- **Small accept bursts**: asyncio accepts up to ``backlog`` connections per loop iteration
  before any of them is admitted, so the burst is kept small (the listen queue itself is not)
  and counted in the headroom. EMFILE is then never reached; if something else in the process
  exhausts the descriptors, asyncio's accept errors are counted instead of logged one by one.
- **One warning per interval** while connections are evicted or refused, with the counts.

Waiting connections sit in one ``OrderedDict`` in deadline order (the timeout is fixed): arming,
disarming, eviction and expiry are O(1) each, with one timer for all of them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, cast

from gateway.wire import error_body
from pgflow.errors import ConfigurationError

if TYPE_CHECKING:
    from gateway.metrics import Metrics

logger = logging.getLogger(__name__)

FILE_HEADROOM = 64  # descriptors kept for files, DNS, logging, handlers' own use
MIN_CONNECTIONS = 8  # a descriptor limit that leaves fewer is a misconfiguration
MIN_ACCEPT_BURST = 16  # connections accepted per loop iteration, at least...
MAX_ACCEPT_BURST = 256  # ...and at most
# Accepted but not yet admitted (up to three loop iterations), or refused and not yet closed.
BURSTS_IN_FLIGHT = 4
LISTEN_BACKLOG = 2048  # connections the kernel queues for accept(): uvicorn's default
LOG_INTERVAL = 10.0  # seconds between two warnings about the connection limit
HTTP_SHARE = 10  # one connection in this many is kept from sockets for HTTP
TIMER_SLACK = 0.05  # seconds: expiries this close together are handled by one timer call
UNLIMITED = 1 << 20  # the cap when RLIMIT_NOFILE is unlimited and none is configured
ACCEPT_FAILED = "socket.accept() out of system resource"  # asyncio's message

_REFUSED_BODY = error_body("unavailable", "too many open connections: retry later")
REFUSED_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"retry-after: 1\r\nconnection: close\r\ncontent-length: "
    + str(len(_REFUSED_BODY)).encode() + b"\r\n\r\n" + _REFUSED_BODY
)
TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n"
                    b"connection: close\r\n\r\n")


@dataclass(frozen=True)
class ConnectionBudget:
    """How many connections one process admits, and why."""

    limit: int
    accept_burst: int  # connections accepted per loop iteration
    descriptors: int | None  # RLIMIT_NOFILE (soft); None: unlimited
    reserved: int  # descriptors kept for everything but client connections
    clamped: bool = False  # the configured cap was above what the descriptors allow


def sockets_within(connection_limit: int, max_sockets: int) -> int:
    """Sockets admitted at once: ``max_sockets``, but never more than nine tenths of the
    connection cap. Open sockets cannot be evicted for a newcomer (an idle HTTP connection can),
    so without this share a client opening sockets up to the cap would keep ``/healthz`` and
    ``run_flow`` out."""
    return max(1, min(max_sockets, connection_limit - connection_limit // HTTP_SHARE))


def connection_budget(configured: int | None, *, descriptors: int | None, open_now: int,
                      database_connections: int) -> ConnectionBudget:
    """The cap: ``configured``, or what the descriptor limit leaves; never above the latter.

    Raises:
        ConfigurationError: the descriptor limit leaves too little room for connections.
    """
    if descriptors is None:
        return ConnectionBudget(configured or UNLIMITED, MAX_ACCEPT_BURST, None, 0)
    burst = max(MIN_ACCEPT_BURST, min(MAX_ACCEPT_BURST, descriptors // 64))
    reserved = open_now + database_connections + FILE_HEADROOM + BURSTS_IN_FLIGHT * burst
    room = descriptors - reserved
    limit = room if configured is None else min(configured, room)
    if limit < 1 or (configured is None and limit < MIN_CONNECTIONS):
        raise ConfigurationError(
            f"the descriptor limit (ulimit -n: {descriptors}) leaves room for {max(room, 0)} "
            f"client connections after {reserved} reserved; raise it to at least "
            f"{reserved + MIN_CONNECTIONS}"
        )
    return ConnectionBudget(limit, burst, descriptors, reserved,
                            clamped=configured is not None and configured > room)


def descriptor_limit() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def open_descriptors() -> int:
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(folder))
        except OSError:
            continue
    return 3


if TYPE_CHECKING:
    class _UvicornHTTP(asyncio.Protocol):
        """What the mixin uses of uvicorn's h11 and httptools protocols."""

        transport: asyncio.Transport
        connections: set[Any]
        cycle: Any

        def on_response_complete(self) -> None: ...
else:
    _UvicornHTTP = asyncio.Protocol


class AdmittedHTTP(_UvicornHTTP):
    """Mixed in before uvicorn's HTTP protocol class: admission, and the request deadline.

    Armed (waiting in ``admission.waiting``) from the connection's start, and again after each
    response, until a complete request has arrived (``cycle.more_body`` false on a cycle newer
    than the one armed after) or the connection was upgraded to a websocket.
    """

    admission: ClassVar[ConnectionAdmission]
    _admission_refused = False
    _admission_armed = False
    _admission_heard = False  # bytes arrived while armed: a request has started
    _admission_after: Any = None  # the request cycle that was complete when armed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        admission = self.admission
        if not admission.admit(len(self.connections)):
            self._admission_refused = True
            sock = cast(asyncio.Transport, transport)
            sock.write(REFUSED_RESPONSE)
            sock.close()
            return
        super().connection_made(transport)
        admission.wait(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._admission_refused:
            return  # uvicorn never saw this connection
        if self._admission_armed:
            self.admission.forget(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._admission_armed:
            self._admission_heard = True
            cycle = self.cycle
            if self.transport.get_protocol() is not self or (
                cycle is not None and cycle is not self._admission_after and not cycle.more_body
            ):
                self.admission.forget(self)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle.response_complete:
            self._admission_after = cycle
            self.admission.wait(self)
        elif cycle.more_body:  # a pipelined request, its body still on the way
            self._admission_after = None
            self.admission.wait(self)

    def request_timed_out(self) -> None:
        cycle = self.cycle
        transport = self.transport
        if transport.is_closing():
            return
        if self._admission_heard and (cycle is None or cycle is self._admission_after):
            transport.write(TIMEOUT_RESPONSE)  # headers started and never finished
        transport.close()


class ConnectionAdmission:
    """The cap and the deadlines of one server's connections; see the module docstring."""

    def __init__(self, budget: ConnectionBudget, request_timeout: float,
                 log_interval: float = LOG_INTERVAL) -> None:
        self.budget = budget
        self.limit = budget.limit
        self.request_timeout = request_timeout
        self.log_interval = log_interval
        # uvicorn's ServerState.connections: every open HTTP connection and websocket.
        self.connections: set[Any] = set()
        self.waiting: OrderedDict[AdmittedHTTP, float] = OrderedDict()  # -> deadline
        self.evicted = 0
        self.refused = 0
        self.timed_out = 0
        self.accept_failures = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._report: asyncio.TimerHandle | None = None
        self._reported = (0, 0, 0, 0)
        self._handler: Any = None
        self._previous_handler: Any = None

    @classmethod
    def for_process(cls, configured: int | None, *, request_timeout: float,
                    database_connections: int) -> ConnectionAdmission:
        """Sized from this process's descriptor limit and the descriptors it holds now."""
        budget = connection_budget(configured, descriptors=descriptor_limit(),
                                   open_now=open_descriptors(),
                                   database_connections=database_connections)
        if budget.clamped:
            logger.warning("--max-connections %s is more than the descriptor limit allows "
                           "(ulimit -n: %s); using %d", configured, budget.descriptors,
                           budget.limit, extra={"action": "connection_limit_clamped"})
        return cls(budget, request_timeout)

    def protocol_class(self, base: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
        """``base`` (uvicorn's HTTP protocol) admitted and timed by this registry."""
        name = f"Admitted{base.__name__}"
        return cast(type[asyncio.Protocol],
                    type(name, (AdmittedHTTP, base), {"admission": self}))

    def track(self, connections: set[Any]) -> None:
        self.connections = connections

    def register_metrics(self, metrics: Metrics) -> None:
        metrics.observe("pgflow_connections_open", "gauge",
                        "TCP connections open (HTTP and websockets)",
                        lambda: len(self.connections))
        metrics.observe("pgflow_connections_limit", "gauge",
                        "connections admitted at once (--max-connections)", lambda: self.limit)
        metrics.observe("pgflow_connections_evicted_total", "counter",
                        "connections waiting for a request closed to admit a new one",
                        lambda: self.evicted)
        metrics.observe("pgflow_connections_refused_total", "counter",
                        "connections refused with 503 at the limit", lambda: self.refused)
        metrics.observe("pgflow_connections_timed_out_total", "counter",
                        "connections closed for want of a complete request in time",
                        lambda: self.timed_out)
        metrics.observe("pgflow_accept_errors_total", "counter",
                        "accept() failures for want of descriptors", lambda: self.accept_failures)

    # -- the event loop ---------------------------------------------------------------------

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Binds to the serving loop, and counts its accept() errors instead of logging each
        (asyncio logs one per connection waiting, per loop iteration)."""
        self._loop = loop
        previous = self._previous_handler = loop.get_exception_handler()

        def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            if context.get("message") == ACCEPT_FAILED:
                self.accept_failures += 1
                self._over_limit()
            elif previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        self._handler = handler
        loop.set_exception_handler(handler)

    def close(self) -> None:
        for timer in (self._timer, self._report):
            if timer is not None:
                timer.cancel()
        self._timer = self._report = None
        loop = self._loop
        if loop is not None and loop.get_exception_handler() is self._handler:
            loop.set_exception_handler(self._previous_handler)

    # -- admission and deadlines (called by AdmittedHTTP) ------------------------------------

    def admit(self, open_now: int) -> bool:
        """Whether a new connection may stay; at the cap, room is made if a connection waits."""
        if open_now < self.limit:
            return True
        waiting = self.waiting
        if waiting:
            oldest, _ = waiting.popitem(last=False)
            oldest._admission_armed = False
            oldest.transport.close()
            self.evicted += 1
            self._over_limit()
            return True
        self.refused += 1
        self._over_limit()
        return False

    def wait(self, protocol: AdmittedHTTP) -> None:
        """Arms ``protocol``'s deadline: a complete request within the request timeout."""
        loop = self._loop
        assert loop is not None, "ConnectionAdmission.install() was not called"
        deadline = loop.time() + self.request_timeout
        waiting = self.waiting
        waiting[protocol] = deadline
        waiting.move_to_end(protocol)
        protocol._admission_armed = True
        protocol._admission_heard = False
        if self._timer is None:
            self._timer = loop.call_at(deadline + TIMER_SLACK, self._expire)

    def forget(self, protocol: AdmittedHTTP) -> None:
        protocol._admission_armed = False
        self.waiting.pop(protocol, None)

    def _expire(self) -> None:
        self._timer = None
        loop = self._loop
        assert loop is not None
        now = loop.time()
        waiting = self.waiting
        while waiting:
            protocol, deadline = next(iter(waiting.items()))
            if deadline > now:
                self._timer = loop.call_at(deadline + TIMER_SLACK, self._expire)
                return
            del waiting[protocol]
            protocol._admission_armed = False
            self.timed_out += 1
            protocol.request_timed_out()

    # -- the log: one line per interval ------------------------------------------------------

    def _counts(self) -> tuple[int, int, int, int]:
        return self.evicted, self.refused, self.timed_out, self.accept_failures

    def _over_limit(self) -> None:
        if self._report is not None:
            return
        loop = self._loop
        assert loop is not None
        logger.warning(
            "connection limit reached: %d open (limit %d); closing connections that wait for "
            "a request to make room, refusing new ones when none waits (summary every %gs)",
            len(self.connections), self.limit, self.log_interval,
            extra={"action": "connection_limit"},
        )
        self._reported = self._counts()
        self._report = loop.call_later(self.log_interval, self._summarise)

    def _summarise(self) -> None:
        counts = self._counts()
        evicted, refused, timed_out, accept_failures = (
            now - before for now, before in zip(counts, self._reported, strict=True))
        self._reported = counts
        if not (evicted or refused or accept_failures):
            self._report = None  # quiet again: the next event is logged at once
            return
        logger.warning(
            "connection limit: %d waiting connections closed, %d refused, %d timed out, %d "
            "accept() errors in the last %gs (%d open, limit %d)",
            evicted, refused, timed_out, accept_failures, self.log_interval,
            len(self.connections), self.limit, extra={"action": "connection_limit"},
        )
        assert self._loop is not None
        self._report = self._loop.call_later(self.log_interval, self._summarise)
