"""The fan-out core without sockets or Postgres: routing, outbox bounds, dedupe, gaps, replays."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.fanout import (
    Client,
    Fanout,
    Item,
    Message,
)
from gateway.wire import CLOSE_GOING_AWAY, CLOSE_TRY_AGAIN, TextFrame

RUN_A = "00000000-0000-0000-0000-00000000000a"
RUN_B = "00000000-0000-0000-0000-00000000000b"


def item(run_id: str, seq: int, size: int = 10) -> Item:
    return (seq, TextFrame(f"{run_id}:{seq}"), size)


def items(run_id: str, first: int, last: int) -> list[Item]:
    return [item(run_id, seq) for seq in range(first, last + 1)]


def texts(frames: list[Message]) -> list[str]:
    return [f.text for f in frames]


def seqs(client: Client, run_id: str) -> list[int]:
    return [int(t.split(":")[1]) for t in texts(client.take()) if t.startswith(run_id + ":")]


def live(fanout: Fanout, client: Client, run_id: str, since: int = 0) -> None:
    """A subscription whose replay found nothing after ``since``."""
    sub = fanout.subscribe(client, run_id, since)
    assert not fanout.apply_replay(sub, [], complete=True, epoch=0)


def publish(fanout: Fanout, run_id: str, seq: int) -> bool:
    seq_, message, size = item(run_id, seq)
    return fanout.publish(run_id, seq_, message, size)


def test_an_event_reaches_only_the_subscribers_of_its_run() -> None:
    fanout = Fanout()
    a1, a2, b = fanout.add_client(), fanout.add_client(), fanout.add_client()
    live(fanout, a1, RUN_A)
    live(fanout, a2, RUN_A)
    live(fanout, b, RUN_B)
    for seq in (1, 2, 3):
        publish(fanout, RUN_A, seq)
    publish(fanout, RUN_B, 1)
    assert seqs(a1, RUN_A) == [1, 2, 3]
    assert seqs(a2, RUN_A) == [1, 2, 3]
    assert texts(b.take()) == [f"{RUN_B}:1"]


def test_every_subscriber_gets_the_same_message_object() -> None:
    fanout = Fanout()
    clients = [fanout.add_client() for _ in range(3)]
    for client in clients:
        live(fanout, client, RUN_A)
    message = TextFrame("once")
    fanout.publish(RUN_A, 1, message, 4)
    assert all(client.take()[0] is message for client in clients)


def test_an_event_at_or_below_the_last_seq_is_dropped_as_a_duplicate() -> None:
    fanout = Fanout()
    client = fanout.add_client()
    live(fanout, client, RUN_A, since=2)
    assert not publish(fanout, RUN_A, 1)
    assert not publish(fanout, RUN_A, 2)
    publish(fanout, RUN_A, 3)
    publish(fanout, RUN_A, 3)
    assert seqs(client, RUN_A) == [3]


def test_a_gap_holds_the_live_events_and_asks_for_a_log_read() -> None:
    fanout = Fanout()
    client = fanout.add_client()
    live(fanout, client, RUN_A)
    publish(fanout, RUN_A, 1)
    assert publish(fanout, RUN_A, 3) is True  # 2 is missing
    assert not publish(fanout, RUN_A, 4)  # already behind: held, the read is pending
    assert seqs(client, RUN_A) == [1]
    assert fanout.read_since(RUN_A) == 1
    assert not fanout.apply_log(RUN_A, items(RUN_A, 2, 3), since=1, complete=True, epoch=0)
    assert seqs(client, RUN_A) == [2, 3, 4]
    assert client.subscriptions[RUN_A].live
    publish(fanout, RUN_A, 5)
    assert seqs(client, RUN_A) == [5]


def test_a_log_read_that_stops_short_of_the_held_events_asks_for_another() -> None:
    fanout = Fanout()
    client = fanout.add_client()
    live(fanout, client, RUN_A)
    publish(fanout, RUN_A, 5)
    assert fanout.apply_log(RUN_A, items(RUN_A, 1, 3), since=0, complete=True, epoch=0) is True
    assert fanout.read_since(RUN_A) == 3
    assert not fanout.apply_log(RUN_A, items(RUN_A, 4, 5), since=3, complete=True, epoch=0)
    assert seqs(client, RUN_A) == [1, 2, 3, 4, 5]


def test_a_new_subscription_holds_live_events_until_its_replay_then_merges_them() -> None:
    fanout = Fanout()
    client = fanout.add_client()
    sub = fanout.subscribe(client, RUN_A, 0)
    # Live events arrive while the replay query runs; 3 is in both.
    publish(fanout, RUN_A, 3)
    publish(fanout, RUN_A, 4)
    assert client.frames == []
    assert not fanout.apply_replay(sub, items(RUN_A, 1, 3), complete=True, epoch=0)
    assert seqs(client, RUN_A) == [1, 2, 3, 4]
    assert sub.live


def test_a_run_read_never_reaches_a_subscription_before_its_own_replay() -> None:
    fanout = Fanout()
    old, new = fanout.add_client(), fanout.add_client()
    live(fanout, old, RUN_A)
    fanout.subscribe(new, RUN_A, 0)  # its access check has not run yet
    publish(fanout, RUN_A, 2)
    fanout.apply_log(RUN_A, items(RUN_A, 1, 2), since=0, complete=True, epoch=0)
    assert seqs(old, RUN_A) == [1, 2]
    assert new.frames == []


def test_a_replay_in_pages_stays_behind_until_the_last_page() -> None:
    fanout = Fanout()
    client = fanout.add_client()
    sub = fanout.subscribe(client, RUN_A, 0)
    publish(fanout, RUN_A, 7)
    assert not fanout.apply_replay(sub, items(RUN_A, 1, 3), complete=False, epoch=0)
    assert not sub.live
    assert not fanout.apply_replay(sub, items(RUN_A, 4, 6), complete=True, epoch=0)
    assert seqs(client, RUN_A) == list(range(1, 8))
    assert sub.live


def test_events_by_reference_are_read_from_the_log() -> None:
    fanout = Fanout()
    client = fanout.add_client()
    live(fanout, client, RUN_A, since=1)
    assert fanout.note_refs(RUN_A, 3) is True
    assert fanout.read_since(RUN_A) == 1
    publish(fanout, RUN_A, 4)  # inline, after the big ones: held
    assert fanout.apply_log(RUN_A, items(RUN_A, 2, 2), since=1, complete=False, epoch=0) is True
    assert not fanout.apply_log(RUN_A, items(RUN_A, 3, 3), since=2, complete=True, epoch=0)
    assert seqs(client, RUN_A) == [2, 3, 4]


def test_refs_the_subscriber_already_has_need_no_read() -> None:
    fanout = Fanout()
    client = fanout.add_client()
    live(fanout, client, RUN_A, since=5)
    assert not fanout.note_refs(RUN_A, 5)
    assert fanout.read_since(RUN_A) is None


def test_resync_reads_every_run_from_the_lowest_last_seq() -> None:
    fanout = Fanout()
    c1, c2 = fanout.add_client(), fanout.add_client()
    live(fanout, c1, RUN_A, since=4)
    live(fanout, c2, RUN_A, since=2)
    live(fanout, c2, RUN_B, since=0)
    assert sorted(fanout.resync()) == [RUN_A, RUN_B]
    assert fanout.read_since(RUN_A) == 2
    # A read issued before the resync fills the gap it knows of, but cannot end the catch-up:
    # it may predate what was committed while notifications were lost.
    assert fanout.apply_log(RUN_A, items(RUN_A, 3, 4), since=2, complete=True, epoch=0)
    assert not c1.subscriptions[RUN_A].live
    assert not fanout.apply_log(RUN_A, items(RUN_A, 3, 6), since=2, complete=True, epoch=1)
    assert seqs(c1, RUN_A) == [5, 6]
    assert seqs(c2, RUN_A) == [3, 4, 5, 6]
    assert c1.subscriptions[RUN_A].live


def test_an_outbox_over_its_frame_limit_closes_only_that_client() -> None:
    ready: list[str] = []
    fanout = Fanout(max_frames=3)
    slow = fanout.add_client(lambda: ready.append("slow"))
    fast = fanout.add_client(lambda: ready.append("fast"))
    live(fanout, slow, RUN_A)
    live(fanout, fast, RUN_A)
    for seq in range(1, 5):
        publish(fanout, RUN_A, seq)
        if seq < 4:
            fast.take()
    assert slow.close_code == CLOSE_TRY_AGAIN
    assert slow.frames == []
    assert fanout.dropped_slow == 1
    assert fast.close_code is None
    assert seqs(fast, RUN_A) == [4]
    assert RUN_A not in slow.subscriptions
    assert ready.count("slow") == 2  # the first frame, then the close
    publish(fanout, RUN_A, 5)
    assert slow.frames == []


def test_a_burst_from_the_log_is_flow_controlled_not_dropped() -> None:
    fanout = Fanout(max_frames=8)
    client = fanout.add_client()
    live(fanout, client, RUN_A)
    assert fanout.note_refs(RUN_A, 20)
    assert not fanout.apply_log(RUN_A, items(RUN_A, 1, 20), since=0, complete=True, epoch=0)
    assert client.close_code is None
    assert client.starved
    assert seqs(client, RUN_A) == [1, 2, 3, 4]  # half the bound
    assert fanout.drained(client) == [RUN_A]
    assert fanout.read_since(RUN_A) == 4
    fanout.apply_log(RUN_A, items(RUN_A, 5, 20), since=4, complete=True, epoch=0)
    assert seqs(client, RUN_A) == [5, 6, 7, 8]
    while fanout.drained(client):
        since = fanout.read_since(RUN_A) or 0
        fanout.apply_log(RUN_A, items(RUN_A, since + 1, 20), since=since, complete=True,
                         epoch=0)
        client.take()
    assert client.subscriptions[RUN_A].live
    assert client.subscriptions[RUN_A].last_seq == 20
    assert fanout.dropped_slow == 0


def test_one_log_event_larger_than_the_byte_bound_still_goes_out() -> None:
    fanout = Fanout(max_bytes=100)
    client = fanout.add_client()
    sub = fanout.subscribe(client, RUN_A, 0)
    big = (1, TextFrame("x" * 1000), 1000)
    assert not fanout.apply_replay(sub, [big, item(RUN_A, 2)], complete=True, epoch=0)
    assert not sub.replayed
    assert client.starved
    assert len(client.take()) == 1
    assert not fanout.apply_replay(sub, [item(RUN_A, 2)], complete=True, epoch=0)
    assert sub.live
    assert client.close_code is None


def test_an_outbox_over_its_byte_limit_is_dropped_too() -> None:
    fanout = Fanout(max_bytes=25)
    client = fanout.add_client()
    live(fanout, client, RUN_A)
    publish(fanout, RUN_A, 1)
    publish(fanout, RUN_A, 2)
    assert client.close_code is None
    publish(fanout, RUN_A, 3)
    assert client.close_code == CLOSE_TRY_AGAIN


def test_on_ready_fires_when_the_outbox_stops_being_empty() -> None:
    calls: list[int] = []
    fanout = Fanout()
    client = fanout.add_client(lambda: calls.append(len(client.frames)))
    live(fanout, client, RUN_A)
    publish(fanout, RUN_A, 1)
    publish(fanout, RUN_A, 2)
    assert calls == [1]
    client.take()
    publish(fanout, RUN_A, 3)
    assert calls == [1, 1]


def test_control_frames_keep_their_place_among_events() -> None:
    fanout = Fanout()
    client = fanout.add_client()
    sub = fanout.subscribe(client, RUN_A, 0)
    fanout.send(client, TextFrame("subscribed"), 10)
    fanout.apply_replay(sub, items(RUN_A, 1, 2), complete=True, epoch=0)
    fanout.send(client, TextFrame("pong"), 4)
    assert texts(client.take()) == ["subscribed", f"{RUN_A}:1", f"{RUN_A}:2", "pong"]


def test_subscribing_again_replaces_the_subscription() -> None:
    fanout = Fanout()
    client = fanout.add_client()
    live(fanout, client, RUN_A)
    publish(fanout, RUN_A, 1)
    client.take()
    sub = fanout.subscribe(client, RUN_A, 0)
    assert fanout.subscription_count == 1
    fanout.apply_replay(sub, items(RUN_A, 1, 1), complete=True, epoch=0)
    assert seqs(client, RUN_A) == [1]


def test_unsubscribe_and_remove_leave_no_trace() -> None:
    fanout = Fanout()
    c1, c2 = fanout.add_client(), fanout.add_client()
    live(fanout, c1, RUN_A)
    live(fanout, c2, RUN_A)
    live(fanout, c2, RUN_B)
    assert fanout.unsubscribe(c1, RUN_A)
    assert not fanout.unsubscribe(c1, RUN_A)
    fanout.remove_client(c2)
    assert fanout.runs == {}
    assert fanout.subscription_count == 0
    assert fanout.clients == {c1}


def test_close_keeps_the_queue_when_asked_and_is_idempotent() -> None:
    fanout = Fanout()
    client = fanout.add_client()
    fanout.send(client, TextFrame("why"), 3)
    fanout.close(client, 1009, "too big", discard=False)
    fanout.close(client, CLOSE_GOING_AWAY)
    assert client.close_code == 1009
    assert texts(client.frames) == ["why"]
    assert not fanout.send(client, TextFrame("late"), 4)


def test_held_events_past_the_cap_are_left_to_the_log() -> None:
    fanout = Fanout(max_held=2)
    client = fanout.add_client()
    sub = fanout.subscribe(client, RUN_A, 0)
    for seq in range(2, 7):
        publish(fanout, RUN_A, seq)
    assert sub.held is not None
    assert [s for s, _, _ in sub.held] == [2, 3]
    assert fanout.apply_replay(sub, items(RUN_A, 1, 1), complete=True, epoch=0) is True
    assert fanout.read_since(RUN_A) == 3
    fanout.apply_log(RUN_A, items(RUN_A, 4, 6), since=3, complete=True, epoch=0)
    assert seqs(client, RUN_A) == [1, 2, 3, 4, 5, 6]
    assert sub.live


# -- the seam, as a model -----------------------------------------------------------------------


@dataclass
class Model:
    """A run's log, its notifications, and reads that see the log as it was when issued."""

    fanout: Fanout
    committed: int = 0
    notifications: list[tuple[str, int]] = field(default_factory=list)  # ("event"|"ref", seq)
    # (sub or None, since, end of the log it sees, epoch it was issued in)
    reads: list[tuple[Any, int, int, int]] = field(default_factory=list)
    read_requested: bool = False
    listening: bool = True

    def commit(self, count: int, by_ref: bool) -> None:
        first = self.committed + 1
        self.committed += count
        if not self.listening:
            return
        if by_ref:
            self.notifications.append(("ref", self.committed))
        else:
            self.notifications.extend(("event", s) for s in range(first, self.committed + 1))

    def deliver(self) -> None:
        kind, seq = self.notifications.pop(0)
        if kind == "ref":
            needed = self.fanout.note_refs(RUN_A, seq)
        else:
            needed = publish(self.fanout, RUN_A, seq)
        self.read_requested |= needed

    def issue_run_read(self) -> None:
        self.read_requested = False
        since = self.fanout.read_since(RUN_A)
        if since is not None:
            self.reads.append((None, since, self.committed, self.fanout.epoch))

    def apply_read(self, index: int) -> None:
        sub, since, end, epoch = self.reads.pop(index)
        events = items(RUN_A, since + 1, end)
        if sub is None:
            self.read_requested |= self.fanout.apply_log(RUN_A, events, since=since,
                                                         complete=True, epoch=epoch)
        else:
            self.read_requested |= self.fanout.apply_replay(sub, events, complete=True,
                                                            epoch=epoch)

    def lose_listener(self) -> None:
        self.notifications.clear()
        self.listening = False

    def reconnect(self) -> None:
        self.listening = True
        self.fanout.resync()
        self.read_requested = True


ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["commit", "commit_ref", "deliver", "subscribe", "issue_read",
                         "apply_read", "drain", "lose", "reconnect"]),
        st.integers(min_value=0, max_value=7),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(ACTIONS, st.sampled_from([6, 4096]))
def test_any_interleaving_delivers_every_event_once_in_order(
    actions: list[tuple[str, int]], max_frames: int
) -> None:
    """Commits, notifications (lost while the listener is away), subscribes, reads that see the
    log as it was when issued, writers draining outboxes (small ones make log reads stop at the
    soft limit and live events overflow them): every follower ends with exactly
    since+1..N, in order — a follower closed for being slow resubscribes with its last seq."""
    fanout = Fanout(max_frames=max_frames)
    model = Model(fanout)
    followers: list[list[Any]] = []  # [client, since, received]

    def follow(since: int) -> Client:
        client = fanout.add_client()
        sub = fanout.subscribe(client, RUN_A, since)
        model.reads.append((sub, since, model.committed, fanout.epoch))  # its replay
        return client

    def drain(follower: list[Any]) -> None:
        client, since, received = follower
        if client.close_code is not None:
            assert client.close_code == CLOSE_TRY_AGAIN
            fanout.remove_client(client)
            follower[0] = follow(received[-1] if received else since)
            return
        received.extend(seqs(client, RUN_A))
        if fanout.drained(client):
            model.read_requested = True

    for action, n in actions:
        if action == "commit":
            model.commit(1 + n % 4, by_ref=False)
        elif action == "commit_ref":
            model.commit(1 + n % 4, by_ref=True)
        elif action == "deliver" and model.notifications:
            model.deliver()
        elif action == "subscribe":
            since = min(n, model.committed)
            followers.append([follow(since), since, []])
        elif action == "issue_read" and model.read_requested:
            model.issue_run_read()
        elif action == "apply_read" and model.reads:
            model.apply_read(n % len(model.reads))
        elif action == "drain" and followers:
            drain(followers[n % len(followers)])
        elif action == "lose" and model.listening:
            model.lose_listener()
        elif action == "reconnect" and not model.listening:
            model.reconnect()
    # Settle: the listener comes back, everything in flight arrives, writers drain, replays
    # page on (as the socket handler does), reads run until none is needed.
    if not model.listening:
        model.reconnect()
    for _ in range(1000):
        while model.notifications:
            model.deliver()
            for follower in followers:
                drain(follower)
        while model.reads:
            model.apply_read(0)
        for follower in followers:
            drain(follower)
            sub = follower[0].subscriptions.get(RUN_A)
            if sub is not None and not sub.replayed and not any(r[0] is sub for r in model.reads):
                model.reads.append((sub, sub.last_seq, model.committed, fanout.epoch))
        if model.read_requested:
            model.issue_run_read()
        elif not model.reads and all(f[0].subscriptions[RUN_A].live for f in followers):
            break
    for index, (client, since, received) in enumerate(followers):
        assert received == list(range(since + 1, model.committed + 1)), (index, since)
        assert client.subscriptions[RUN_A].live


def test_bad_limits_are_refused() -> None:
    with pytest.raises(RuntimeError):
        Fanout(max_frames=0)


def test_a_hole_in_the_log_stalls_the_subscription_instead_of_going_live() -> None:
    fanout = Fanout()
    client = fanout.add_client()
    sub = fanout.subscribe(client, RUN_A, 0)
    # The replay skips seq 3 (a deleted row): delivered up to the hole, behind, never live.
    assert fanout.apply_replay(sub, items(RUN_A, 1, 2) + items(RUN_A, 4, 5), complete=True,
                               epoch=0)
    assert (sub.live, sub.last_seq, seqs(client, RUN_A)) == (False, 2, [1, 2])
    # Each run read that finds the same hole counts: the shell backs off, then gives up.
    for stalls in (1, 2, 3):
        assert fanout.apply_log(RUN_A, items(RUN_A, 4, 5), since=2, complete=True, epoch=0)
        assert sub.stalls == stalls
        assert fanout.stalled(RUN_A) == [sub]
    # A read that fills the hole ends the stall.
    assert not fanout.apply_log(RUN_A, items(RUN_A, 3, 5), since=2, complete=True, epoch=0)
    assert (sub.live, sub.stalls, fanout.stalled(RUN_A)) == (True, 0, [])


def test_a_complete_read_short_of_a_known_seq_stalls_and_a_paged_read_with_a_hole_too() -> None:
    fanout = Fanout()
    client = fanout.add_client()
    live(fanout, client, RUN_A)
    assert fanout.note_refs(RUN_A, 5)  # a notification says 1..5 are in the log
    assert fanout.apply_log(RUN_A, items(RUN_A, 1, 2), since=0, complete=True, epoch=0)
    (sub,) = fanout.stalled(RUN_A)
    assert sub.stalls == 1
    # An incomplete page with a hole would otherwise be re-read forever.
    assert fanout.apply_log(RUN_A, items(RUN_A, 4, 4), since=2, complete=False, epoch=0)
    assert sub.stalls == 2
    # A read that reaches the known seq ends the stall.
    assert not fanout.apply_log(RUN_A, items(RUN_A, 3, 5), since=2, complete=True, epoch=0)
    assert sub.stalls == 0
