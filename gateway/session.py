"""One socket's session, sans-I/O: admission, subscriptions and their replays, in order.

A transport (``native_socket.py`` under uvicorn, ``asgi_socket.py`` when mounted) asks
``admit`` whether a socket may open, then feeds the ``Session`` the client's messages and tells
it when it took the outbox. The session never reads the event log: a subscribe registers the
subscription in the fan-out and *asks* for its replay (``LogReads.request_replay``); the relay
answers with ``replay_read`` (or ``replay_failed``), one page at a time. Pages go at the
socket's pace: the next one is asked for once the transport has taken what is queued.

Messages are handled in the order they arrive: while a replay is under way, later messages wait
in a backlog (the transport stops reading past ``MAX_BACKLOG``). Frames leave through the
fan-out's outbox, whose bounds apply to everything a session queues.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from starlette.datastructures import Headers, QueryParams

from gateway.auth import Authenticator, Principal, bearer_token
from gateway.errors import (
    BadRequestError,
    ForbiddenError,
    RequestError,
    TooLargeError,
    TooManySubscriptionsError,
    UnauthorizedError,
)
from gateway.fanout import Fanout, Item, Subscription
from gateway.wire import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_TOKEN_EXPIRED,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN,
    Subscribe,
    TextFrame,
    close_reason,
    error_body,
    error_frame,
    error_status,
    parse_client_frame,
    pong_frame,
    subscribed_frame,
    unsubscribed_frame,
)
from pgflow.errors import PGFlowError

logger = logging.getLogger(__name__)

MAX_BACKLOG = 32  # client messages waiting behind a replay before the transport stops reading


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


def admit(headers: Headers, query_string: bytes, *, serving: bool, open_now: int, limit: int,
          auth: Authenticator, refused: Counter[str]) -> Principal | Unavailable | Rejected:
    """Whether a socket may open: capacity, Origin, token. Counts refusals by reason."""
    if not serving:
        refused["stopping"] += 1
        return Unavailable(503, CLOSE_GOING_AWAY, "unavailable", "the gateway is not serving")
    if open_now >= limit:
        refused["too_many_connections"] += 1
        return Unavailable(429, CLOSE_TRY_AGAIN, "too_many_connections",
                           "too many open sockets: retry later")
    origin = headers.get("origin")
    if origin is not None and not auth.origins.allows(origin):
        refused["origin"] += 1
        return Rejected(ForbiddenError(f"Origin {origin} may not open this socket"))
    try:
        token = QueryParams(query_string).get("token")
        if token is None:
            token = bearer_token(headers.get("authorization"))
        return auth.authenticate(token)
    except UnauthorizedError as exc:
        refused["unauthorized"] += 1
        return Rejected(exc)


# -- what a session asks of the relay ---------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ReplayRead:
    """A request: read the log of ``sub``'s run after ``since``, for ``session``.

    ``first``: the subscription's first page, read with the run's flow, owner and last seq (the
    access check needs them, in the same snapshot).
    """

    session: Session
    sub: Subscription
    since: int
    first: bool

    @property
    def run_id(self) -> str:
        return self.sub.run_id


@dataclass(frozen=True, slots=True)
class RunHead:
    """What a first page tells besides events: whose run it is, and how far its log goes."""

    flow_slug: str
    owner: str | None
    last_seq: int


class LogReads(Protocol):
    """The relay, as sessions see it: it reads the log for them."""

    def request_read(self, run_id: str) -> None:
        """Read the run's log for its subscriptions that are behind (one read for them all)."""

    def request_replay(self, read: ReplayRead) -> None:
        """Read one page of a subscription's replay; answer with ``replay_read``."""


@dataclass(frozen=True)
class SessionLimits:
    max_frame_bytes: int
    max_subscriptions: int


# -- the session ------------------------------------------------------------------------------

class Session:
    """One accepted socket: its client in the fan-out, its subscriptions and their replays.

    ``wake`` is the transport's: called when frames are queued or the client is closing.
    ``hold_reading(True)`` asks the transport to stop reading (the backlog is full), and
    ``hold_reading(False)`` to read again.
    """

    def __init__(
        self,
        number: int,
        principal: Principal,
        *,
        fanout: Fanout,
        auth: Authenticator,
        reads: LogReads,
        limits: SessionLimits,
        wake: Callable[[], object] | None = None,
        hold_reading: Callable[[bool], None] | None = None,
    ) -> None:
        self.number = number
        self.principal = principal
        self.fanout = fanout
        self.auth = auth
        self.reads = reads
        self.limits = limits
        self.client = fanout.add_client(wake, name=f"ws-{number}")
        self._hold_reading = hold_reading
        self._replaying: Subscription | None = None  # messages wait while this replays
        self._room_wanted = False  # the replay's next page waits for the outbox to be taken
        self._backlog: deque[str | int] | None = None
        self._reading_held = False
        self._closed = False

    # -- from the transport -----------------------------------------------------------------

    def receive(self, message: str | int) -> None:
        """A client message: its text, or the size of a binary one (refused either way)."""
        if self._replaying is not None:
            if self._backlog is None:
                self._backlog = deque()
            self._backlog.append(message)
            if len(self._backlog) == MAX_BACKLOG and self._hold_reading is not None:
                self._reading_held = True
                self._hold_reading(True)
            return
        self._handle(message)

    @property
    def wants_outbox_taken(self) -> bool:
        """Whether ``took_outbox`` has anything to do (checked on the writer's hot path)."""
        return self._room_wanted or self.client.starved

    def took_outbox(self) -> None:
        """The transport took the outbox: a replay waiting for room goes on, starved runs read
        on."""
        client = self.client
        if self._room_wanted and (not client.frames or client.close_code is not None):
            self._room_wanted = False
            sub = self._replaying
            if sub is not None:
                self._next_page(sub)
        if client.starved:
            for run_id in self.fanout.drained(client):
                self.reads.request_read(run_id)

    def close(self, code: int, reason: str) -> None:
        self.fanout.close(self.client, code, reason)

    def fail(self) -> None:
        """An unexpected error in this socket's code: close it, the client resumes."""
        self.fanout.close(self.client, CLOSE_INTERNAL, "internal error: resubscribe with since")

    def expire(self) -> None:
        self.fanout.close(self.client, CLOSE_TOKEN_EXPIRED,
                          "token expired: reconnect with a fresh token")

    def peer_closing(self) -> None:
        """The peer started (or answered) the closing handshake: nothing more goes out."""
        if self.client.close_code is None:
            self.fanout.close(self.client, CLOSE_GOING_AWAY, "peer closed")

    def closed(self) -> None:
        """The socket is gone (or going): out of the fan-out. Idempotent."""
        self._closed = True
        self._replaying = None
        self._room_wanted = False
        self._backlog = None
        self.fanout.remove_client(self.client)

    # -- from the relay ---------------------------------------------------------------------

    def start_read(self, read: ReplayRead) -> bool:
        """The relay is about to read ``read``: False when nobody waits for it any more (the
        socket closed), and the session moves on."""
        if self._replaying is read.sub and self.fanout.is_current(read.sub):
            return True
        self._replay_done(read.sub)
        return False

    def replay_read(self, read: ReplayRead, head: RunHead | None, items: Sequence[Item], *,
                    complete: bool, epoch: int) -> None:
        """A page of ``read.sub``'s replay, read in ``epoch``; ``complete``: it reached the end
        of the log. The first page comes with the run's ``head``."""
        sub = read.sub
        if self._replaying is not sub:
            return
        fanout = self.fanout
        run_id = sub.run_id
        if head is not None:
            try:
                self.auth.check_run(self.principal, head.flow_slug, head.owner, run_id)
            except PGFlowError as exc:
                self.replay_failed(read, exc)
                return
            self._push(subscribed_frame(run_id, head.last_seq))
        behind = fanout.apply_replay(sub, items, complete=complete, epoch=epoch)
        if sub.replayed or not fanout.is_current(sub):
            if behind:
                self.reads.request_read(run_id)
            self._replay_done(sub)
            return
        # More pages, or this one stopped at the outbox's soft limit: read on from last_seq
        # once the transport has taken what is queued.
        client = self.client
        if client.frames and client.close_code is None:
            self._room_wanted = True
        else:
            self._next_page(sub)

    def replay_failed(self, read: ReplayRead, exc: PGFlowError) -> None:
        sub = read.sub
        if self._replaying is not sub:
            return
        if self.fanout.is_current(sub):
            self.fanout.unsubscribe(self.client, sub.run_id)
        self._error(exc, sub.run_id)
        self._replay_done(sub)

    # -- messages ---------------------------------------------------------------------------

    def _handle(self, message: str | int) -> None:
        if isinstance(message, int):
            if message > self.limits.max_frame_bytes:
                self._too_large()
            else:
                self._error(BadRequestError("binary frames are not supported: send JSON text"))
            return
        limit = self.limits.max_frame_bytes
        if len(message) > limit or (len(message) * 4 > limit and len(message.encode()) > limit):
            self._too_large()
            return
        try:
            request = parse_client_frame(message)
        except RequestError as exc:
            self._error(exc)
            return
        if request["type"] == "subscribe":
            self._subscribe(request)
        elif request["type"] == "unsubscribe":
            self.fanout.unsubscribe(self.client, request["run_id"])
            self._push(unsubscribed_frame(request["run_id"]))
        else:
            self._push(pong_frame(request["id"]))

    def _too_large(self) -> None:
        limit = self.limits.max_frame_bytes
        self._error(TooLargeError(f"frames are limited to {limit} bytes"))
        self.fanout.close(self.client, CLOSE_TOO_BIG, "frame too large", discard=False)

    def _subscribe(self, request: Subscribe) -> None:
        client = self.client
        run_id = request["run_id"]
        if client.close_code is not None:
            return  # closed while this waited its turn
        limit = self.limits.max_subscriptions
        if run_id not in client.subscriptions and len(client.subscriptions) >= limit:
            self._error(TooManySubscriptionsError(
                f"a socket may follow {limit} runs: unsubscribe from finished ones"), run_id)
            return
        # Registered before the replay's query: what commits after that query's snapshot
        # arrives live and is held until the replay is applied.
        sub = self.fanout.subscribe(client, run_id, request["since"])
        self._replaying = sub
        self.reads.request_replay(ReplayRead(self, sub, request["since"], first=True))

    def _next_page(self, sub: Subscription) -> None:
        if not self.fanout.is_current(sub):
            self._replay_done(sub)
            return
        self.reads.request_replay(ReplayRead(self, sub, sub.last_seq, first=False))

    def _replay_done(self, sub: Subscription) -> None:
        """The replay of ``sub`` is over: the messages that waited behind it go on, in order."""
        if self._replaying is not sub:
            return
        self._replaying = None
        self._room_wanted = False
        backlog = self._backlog
        while backlog and self._replaying is None and self.client.close_code is None:
            self._handle(backlog.popleft())
        if self._replaying is None:
            self._backlog = None
            if self._reading_held and not self._closed and self._hold_reading is not None:
                self._reading_held = False
                self._hold_reading(False)

    def _push(self, text: str) -> None:
        self.fanout.send(self.client, TextFrame(text), len(text))

    def _error(self, exc: PGFlowError, run_id: str | None = None) -> None:
        described = error_status(exc)
        code = described[0] if described is not None else "internal"
        if run_id is None and isinstance(exc, RequestError):
            run_id = exc.run_id
        self._push(error_frame(code, str(exc), run_id))

    def __repr__(self) -> str:
        return f"<Session ws-{self.number}>"
