"""Fan-out, the pure core: who follows which run, what each socket still has to send.

Plain synchronous classes, driven by the sessions (``session.py``, one per socket) and the
relay (``relay.py``: notifications and log reads), and by unit tests without sockets or Postgres.
docs/design/fanout.md explains the design; the invariants it relies on:

- A subscription pushes an event only if its ``seq`` is ``last_seq + 1``: anything at or below
  ``last_seq`` is a duplicate and dropped, anything above is a gap.
- A subscription is *live* (``held is None``) or *behind* (``held`` is a list): behind, it holds
  the live events it receives until a log read fills the gap below them. A new subscription is
  behind until its own replay (a log read issued after it was registered) completes, so an event
  committed between the replay's snapshot and the live stream can be neither missed nor doubled.
- ``need`` is the highest seq known to exist; a subscription goes live only once it reached it.
- Reads carry the ``epoch`` they were issued in; ``resync`` (the LISTEN connection was lost)
  starts a new one. A read from before a subscription's epoch may fill it but never makes it
  live: it cannot contain what was committed while notifications were being lost.
- Each socket has one bounded outbox (frames and bytes). Live events and control frames that
  overflow it close the socket with 1013: the client resumes with ``since``; the others are
  never held back. Events from the log (replays, catch-ups) are flow-controlled instead: they
  stop at half the bound (the client is *starved*), the subscription stays behind, and the read
  goes on when the writer has taken the outbox (``drained``). A burst of a thousand events from
  one transaction thus reaches a fast socket whole and costs a slow one nothing but lag.
- A log read shows the log as it is: a run's visible events are ``1..last_seq`` without holes.
  A read that skips a seq (a row deleted by hand or by retention), or a complete read that
  leaves a subscription short of ``need``, *stalls* the subscription (``Subscription.stalls``
  counts such reads in a row without progress). The shell re-reads with backoff and, past a
  few, ends the subscription with an error (``gap`` or ``not_found``): it never re-reads in a
  loop, and never goes live over a hole.

Each frame is built once (a ``wire.TextFrame``: its bytes are encoded once too) and the same
object is appended to every subscriber's outbox.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeAlias

from gateway.wire import CLOSE_TRY_AGAIN, TextFrame

# A frame built once and shared by every socket it goes to.
Message: TypeAlias = TextFrame
# An event ready to send: (seq, message, size of its text).
Item: TypeAlias = tuple[int, Message, int]

DEFAULT_MAX_FRAMES = 4096
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_HELD = 1024  # live events a behind subscription keeps; past that, the log has them

# What _deliver did with a log read's events.
_DELIVERED = 0  # every event that continues last_seq
_STARVED = 1  # stopped at the outbox's soft limit
_GAP = 2  # stopped at a seq missing from the log


class Client:
    """One socket: its outbox and its subscriptions.

    ``on_ready`` is called (with no arguments) when the outbox goes from empty to non-empty and
    when the client is closed: the shell's writer waits for it.
    """

    __slots__ = ("close_code", "close_reason", "frames", "name", "on_ready", "queued_bytes",
                 "starved", "subscriptions")

    def __init__(self, on_ready: Callable[[], object] | None = None, name: str = "") -> None:
        self.frames: list[Message] = []
        self.queued_bytes = 0
        self.subscriptions: dict[str, Subscription] = {}
        self.close_code: int | None = None
        self.close_reason = ""
        self.on_ready = on_ready
        self.name = name
        self.starved = False  # a log delivery stopped at the soft limit: read on when drained

    def take(self) -> list[Message]:
        """Everything queued, in order; the outbox is empty afterwards."""
        frames = self.frames
        self.frames = []
        self.queued_bytes = 0
        return frames

    def __repr__(self) -> str:
        return f"<Client {self.name or id(self)} subscriptions={len(self.subscriptions)}>"


class Subscription:
    __slots__ = ("client", "epoch", "held", "last_seq", "need", "replayed", "run_id", "stalls")

    def __init__(self, client: Client, run_id: str, since: int, epoch: int) -> None:
        self.client = client
        self.run_id = run_id
        self.last_seq = since  # the last seq pushed to the client (or the client's since)
        self.need = since  # the log is known to reach this seq
        self.held: list[Item] | None = []  # behind until the replay completes
        self.replayed = False
        self.epoch = epoch  # only a read issued in this epoch or later can make it live
        self.stalls = 0  # log reads in a row that could not move it on (a hole in the log)

    @property
    def live(self) -> bool:
        return self.held is None

    def __repr__(self) -> str:
        state = "live" if self.held is None else f"behind(held={len(self.held)})"
        return f"<Subscription {self.run_id} last_seq={self.last_seq} {state}>"


class Fanout:
    """The subscriptions registry and the router of events to outboxes."""

    def __init__(
        self,
        *,
        max_frames: int = DEFAULT_MAX_FRAMES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_held: int = DEFAULT_MAX_HELD,
    ) -> None:
        if max_frames < 1 or max_bytes < 1 or max_held < 0:
            raise RuntimeError(
                f"bad fan-out limits: frames={max_frames!r} bytes={max_bytes!r} held={max_held!r}"
            )
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.soft_frames = max(1, max_frames // 2)
        self.soft_bytes = max(1, max_bytes // 2)
        self.max_held = max_held
        self.runs: dict[str, dict[Client, Subscription]] = {}
        self.clients: set[Client] = set()
        self.epoch = 0  # incremented by resync()
        self.subscription_count = 0
        self.dropped_slow = 0
        self.frames_queued = 0

    # -- clients ----------------------------------------------------------------------------

    def add_client(self, on_ready: Callable[[], object] | None = None, name: str = "") -> Client:
        client = Client(on_ready, name)
        self.clients.add(client)
        return client

    def remove_client(self, client: Client) -> None:
        self._detach_all(client)
        client.frames = []
        client.queued_bytes = 0
        self.clients.discard(client)

    def close(self, client: Client, code: int, reason: str = "", *, discard: bool = True) -> None:
        """Marks the client closing: it gets nothing more and its writer is woken.

        ``discard``: drop what is queued (the client resumes with ``since``); otherwise the
        writer sends it first (an error frame that explains the close). The shell then sends the
        close frame with ``client.close_code``. Idempotent.
        """
        if client.close_code is not None:
            return
        client.close_code = code
        client.close_reason = reason
        self._detach_all(client)
        if discard:
            client.frames = []
            client.queued_bytes = 0
        if client.on_ready is not None:
            client.on_ready()

    def drop(self, client: Client) -> None:
        """Closes a client that cannot keep up (1013), counting it."""
        if client.close_code is None:
            self.dropped_slow += 1
            self.close(client, CLOSE_TRY_AGAIN, "too slow: resubscribe with since")

    def drained(self, client: Client) -> list[str]:
        """The writer took the client's outbox. Returns the runs whose log reads stopped at the
        soft limit (see ``starved``) and must go on."""
        if not client.starved:
            return []
        client.starved = False
        return [run_id for run_id, sub in client.subscriptions.items()
                if sub.replayed and sub.held is not None]

    def send(self, client: Client, message: Message, size: int) -> bool:
        """Queues a frame that belongs to no run (subscribed, error, pong). False: dropped."""
        if client.close_code is not None:
            return False
        if not self._push(client, message, size):
            self.drop(client)
            return False
        return True

    # -- subscriptions ----------------------------------------------------------------------

    def subscribe(self, client: Client, run_id: str, since: int) -> Subscription:
        """Registers a subscription, behind until ``apply_replay(..., complete=True)``.

        A subscription to a run the client already follows replaces it.
        """
        if client.close_code is not None:
            raise RuntimeError(f"subscribe on closed client {client!r}")
        old = client.subscriptions.get(run_id)
        if old is not None:
            self._detach(old)
        sub = Subscription(client, run_id, since, self.epoch)
        client.subscriptions[run_id] = sub
        self.runs.setdefault(run_id, {})[client] = sub
        self.subscription_count += 1
        return sub

    def unsubscribe(self, client: Client, run_id: str) -> bool:
        sub = client.subscriptions.get(run_id)
        if sub is None:
            return False
        self._detach(sub)
        return True

    def is_current(self, sub: Subscription) -> bool:
        return sub.client.subscriptions.get(sub.run_id) is sub

    def _detach(self, sub: Subscription) -> None:
        client = sub.client
        if client.subscriptions.get(sub.run_id) is sub:
            del client.subscriptions[sub.run_id]
        subs = self.runs.get(sub.run_id)
        if subs is not None and subs.get(client) is sub:
            del subs[client]
            self.subscription_count -= 1
            if not subs:
                del self.runs[sub.run_id]

    def _detach_all(self, client: Client) -> None:
        for sub in list(client.subscriptions.values()):
            self._detach(sub)

    # -- routing ----------------------------------------------------------------------------

    def publish(self, run_id: str, seq: int, message: Message, size: int) -> bool:
        """Routes one live event (from a notification) to the run's subscribers.

        Returns True when a subscriber found a gap below it: the shell must read the run's log
        (``read_since`` / ``apply_log``).
        """
        subs = self.runs.get(run_id)
        if not subs:
            return False
        need_read = False
        dropped: list[Client] | None = None
        for sub in subs.values():
            held = sub.held
            if held is None:
                last = sub.last_seq
                if seq == last + 1:
                    sub.last_seq = seq
                    if not self._push(sub.client, message, size):
                        dropped = dropped or []
                        dropped.append(sub.client)
                elif seq > last:
                    sub.held = [(seq, message, size)]
                    sub.need = max(sub.need, seq)
                    need_read = True
            elif seq > sub.last_seq:
                if len(held) < self.max_held:
                    held.append((seq, message, size))
                if seq > sub.need:
                    sub.need = seq
        if dropped:
            for client in dropped:
                self.drop(client)
        return need_read

    def note_refs(self, run_id: str, to_seq: int) -> bool:
        """A notification says the log holds the run's events up to ``to_seq`` (by reference).

        Returns True when a subscriber is behind them and the shell must read the log.
        """
        subs = self.runs.get(run_id)
        if not subs:
            return False
        need_read = False
        for sub in subs.values():
            if sub.last_seq >= to_seq:
                continue
            if to_seq > sub.need:
                sub.need = to_seq
            if sub.held is None:
                sub.held = []
            if sub.replayed:
                need_read = True
        return need_read

    def resync(self) -> list[str]:
        """After a lost LISTEN connection: every subscription may have missed events.

        Starts a new epoch and marks every subscription behind until a read issued from now on
        completes it; returns the runs to read from the log.
        """
        self.epoch += 1
        for subs in self.runs.values():
            for sub in subs.values():
                sub.epoch = self.epoch
                if sub.held is None:
                    sub.held = []
        return list(self.runs)

    def read_since(self, run_id: str) -> int | None:
        """Where a log read for the run must start; None when no subscription needs one."""
        subs = self.runs.get(run_id)
        if not subs:
            return None
        since: int | None = None
        for sub in subs.values():
            if sub.replayed and sub.held is not None and (since is None or sub.last_seq < since):
                since = sub.last_seq
        return since

    def apply_replay(self, sub: Subscription, events: Sequence[Item], *, complete: bool,
                     epoch: int) -> bool:
        """Applies one page of a subscription's own replay (a log read issued after it was
        registered, in ``epoch``). ``complete``: the page reached the end of the log.

        Until ``sub.replayed``, the shell goes on reading pages from ``sub.last_seq`` (after the
        writer has taken the outbox: a page stops at the soft limit). Returns True when, the
        replay done, the subscription is still behind (held events beyond a gap): the shell must
        read the run's log.
        """
        client = sub.client
        if not self.is_current(sub) or client.close_code is not None:
            return False
        delivered = self._deliver(sub, events)
        if delivered == _STARVED or (delivered == _DELIVERED and not complete):
            return False
        # Complete, or stopped at a hole in the log: reading further pages would find the same
        # hole. Behind past it, the run's reads (the relay's) decide what it is.
        sub.replayed = True
        return self._flush(sub, epoch) and not client.starved

    def apply_log(self, run_id: str, events: Sequence[Item], *, since: int, complete: bool,
                  epoch: int) -> bool:
        """Applies a log read of the run's events after ``since`` (one read for all its
        subscribers), issued in ``epoch``. It completes only the subscriptions it covers: a
        subscription behind ``since`` (it joined after the read was issued) needs another.

        ``complete``: the read reached the end of the log; if not, the subscriptions stay behind
        until the next page. Returns True when some subscription is still behind.
        """
        subs = self.runs.get(run_id)
        if not subs:
            return False
        behind = False
        end = events[-1][0] if events else None
        for sub in subs.values():
            if not sub.replayed:
                continue  # nothing reaches it before its own replay (and its access check)
            if sub.last_seq < since:
                behind = behind or sub.held is not None
                continue
            before = sub.last_seq
            delivered = self._deliver(sub, events)
            if not complete and end is not None:
                sub.need = max(sub.need, end + 1)
                if sub.held is None:
                    sub.held = []
            if delivered == _STARVED:
                sub.stalls = 0
                continue  # starved: read on when its writer drains, not now (it would spin)
            if sub.held is not None and self._flush(sub, epoch) and not sub.client.starved:
                behind = True
                if delivered == _GAP or (complete and epoch >= sub.epoch):
                    # The log, read whole, lacks what the subscription needs.
                    sub.stalls = sub.stalls + 1 if sub.last_seq == before else 1
                    continue
            sub.stalls = 0
        return behind

    def stalled(self, run_id: str) -> list[Subscription]:
        """The run's subscriptions that its last log read could not move on (``stalls``)."""
        subs = self.runs.get(run_id)
        if not subs:
            return []
        return [sub for sub in subs.values() if sub.stalls and sub.held is not None]

    def _deliver(self, sub: Subscription, events: Sequence[Item]) -> int:
        """Pushes the log events that continue ``last_seq``, up to the soft limit.

        ``_STARVED``: stopped at the limit (the client is starved); ``_GAP``: stopped at a seq
        the log does not have. Either way the subscription is left behind.
        """
        client = sub.client
        last = sub.last_seq
        for seq, message, size in events:
            if seq <= last:
                continue
            if seq != last + 1:
                sub.last_seq = last
                sub.need = max(sub.need, seq)
                if sub.held is None:
                    sub.held = []
                return _GAP
            if not self._push_soft(client, message, size):
                sub.last_seq = last
                sub.need = max(sub.need, events[-1][0])
                if sub.held is None:
                    sub.held = []
                return _STARVED
            last = seq
        sub.last_seq = last
        return _DELIVERED

    def _flush(self, sub: Subscription, epoch: int) -> bool:
        """Delivers held events that continue ``last_seq``; goes live when nothing is missing
        and the read was issued in the subscription's epoch. Returns True when still behind.
        """
        held = sub.held or []
        last = sub.last_seq
        client = sub.client
        remaining: list[Item] = []
        for index, (seq, message, size) in enumerate(held):
            if seq <= last:
                continue
            if seq != last + 1 or not self._push_soft(client, message, size):
                remaining = held[index:]
                break
            last = seq
        sub.last_seq = last
        if remaining or last < sub.need or epoch < sub.epoch:
            sub.held = remaining
            return True
        sub.held = None
        return False

    # -- outboxes ---------------------------------------------------------------------------

    def _push(self, client: Client, message: Message, size: int) -> bool:
        frames = client.frames
        frames.append(message)
        client.queued_bytes += size
        self.frames_queued += 1
        count = len(frames)
        if count > self.max_frames or client.queued_bytes > self.max_bytes:
            return False
        if count == 1 and client.on_ready is not None:
            client.on_ready()
        return True

    def _push_soft(self, client: Client, message: Message, size: int) -> bool:
        """A push of an event the log still has: refused (starving the client) once the outbox
        is half full, never over the bound, so it never drops anyone. One frame always fits in
        an empty outbox, however large."""
        frames = client.frames
        if frames and (len(frames) >= self.soft_frames or client.queued_bytes >= self.soft_bytes):
            client.starved = True
            return False
        frames.append(message)
        client.queued_bytes += size
        self.frames_queued += 1
        if len(frames) == 1 and client.on_ready is not None:
            client.on_ready()
        return True
