"""Which runs a client follows, and where each follower is in its run's log: the client's pure
core, without I/O (``_feed.py`` does the listening and the reading).

A ``Follower`` is one ``events()`` iteration or one ``result()`` wait. Events reach it in ``seq``
order, each once, whether they come from a notification or from the log:

- an event at or below its position is a repeat (a notification and a log read overlap, or a
  notification repeats events): dropped;
- the event just after its position is taken;
- one further on is a gap (a notification was lost, or carried references): the run must be
  read from the log, from the follower's position (``Following.read_since``).

A follower ends after a run's terminal event (``run:completed``, ``run:failed``,
``run:cancelled``) that was the last event of what it was given: a retried run's log goes on
after ``run:failed`` with ``run:retried``, and a read of that log must not end at the first.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, cast

from pgflow.db.notifications import EventsNotification, Notification

TERMINAL_EVENTS = frozenset({"run:completed", "run:failed", "run:cancelled"})

Event = dict[str, Any]  # one event of a run's log (docs/reference/events.md)


class Follower:
    """One reader of one run's events, from ``since`` on.

    ``keep``: it wants every event (``events()``), queued in ``events`` until taken; otherwise
    only the last one is kept (``result()`` needs the terminal event alone).
    """

    def __init__(self, run_id: str, since: int, *, keep: bool) -> None:
        self.run_id = run_id
        self.position = since  # the highest seq taken
        # Whether it has seen the event at ``position`` (a follower placed at ``since`` > 0 is
        # read from ``since - 1``, to learn whether that event ended the run).
        self.placed = since == 0
        self.keep = keep
        self.events: deque[Event] = deque()
        self.last: Event | None = None  # the event at ``position``, once seen
        self.ended = False
        self.error: BaseException | None = None
        self.changed = asyncio.Event()

    @property
    def read_from(self) -> int:
        return self.position if self.placed else self.position - 1

    def take(self, events: Iterable[Event], *, complete: bool) -> bool:
        """Takes what continues its log from ``events`` (in seq order, of its run).

        ``complete``: nothing follows ``events`` in the log as far as the caller knows (a
        notification; a log read shorter than its page). Returns True when ``events`` skipped
        past its position: the run must be read from the log.
        """
        if self.ended or self.error is not None:
            return False
        taken = False
        gap = False
        for event in events:
            seq: int = event["seq"]
            if seq < self.position:
                continue
            if seq == self.position:
                if not self.placed:
                    self.placed, self.last, taken = True, event, True
                continue
            if seq > self.position + 1:
                gap = True
                break
            self.position, self.placed, self.last, taken = seq, True, event, True
            if self.keep:
                self.events.append(event)
        if (complete and not gap and self.last is not None
                and self.last.get("event") in TERMINAL_EVENTS):
            self.ended = taken = True
        if taken:
            self.changed.set()
        return gap

    def fail(self, error: BaseException) -> None:
        if not self.ended and self.error is None:
            self.error = error
            self.changed.set()


class Following:
    """Every follower of a client, by run; routes notifications and log reads to them."""

    def __init__(self) -> None:
        self._runs: dict[str, dict[Follower, None]] = {}

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._runs

    def __len__(self) -> int:
        return len(self._runs)

    def add(self, follower: Follower) -> None:
        self._runs.setdefault(follower.run_id, {})[follower] = None

    def remove(self, follower: Follower) -> None:
        followers = self._runs.get(follower.run_id)
        if followers is not None:
            followers.pop(follower, None)
            if not followers:
                del self._runs[follower.run_id]

    def runs(self) -> list[str]:
        return list(self._runs)

    def followers(self) -> Iterator[Follower]:
        for followers in list(self._runs.values()):
            yield from list(followers)

    def read_since(self, run_id: str) -> int | None:
        """Where a log read of the run starts (``since < seq``); None when nobody follows it or
        nobody there needs more."""
        waiting = [f.read_from for f in self._runs.get(run_id, ()) if not f.ended
                   and f.error is None]
        return min(waiting) if waiting else None

    def take(self, run_id: str, events: Sequence[Event], *, complete: bool) -> bool:
        """Gives the run's followers ``events``; True when one of them needs a log read."""
        behind = False
        for follower in list(self._runs.get(run_id, ())):
            behind |= follower.take(events, complete=complete)
        return behind

    def route(self, notification: Notification) -> list[str]:
        """Hands a notification's events to their followers; returns the followed runs to read
        from the log (a gap, or events given by reference)."""
        to_read: dict[str, None] = {}
        if "events" in notification:
            by_run: dict[str, list[Event]] = {}
            for event in cast(EventsNotification, notification)["events"]:
                if event["run_id"] in self._runs:
                    by_run.setdefault(event["run_id"], []).append(cast(Event, event))
            for run_id, events in by_run.items():
                if self.take(run_id, events, complete=True):
                    to_read[run_id] = None
        else:
            for ref in notification["refs"]:
                run_id = ref["run_id"]
                if any(f.position < ref["to"] and not f.ended
                       for f in self._runs.get(run_id, ())):
                    to_read[run_id] = None
        return list(to_read)

    def fail_all(self, error: BaseException) -> None:
        for follower in self.followers():
            follower.fail(error)
