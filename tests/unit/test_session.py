"""A socket's session without sockets or Postgres: admission, the order of messages, replays
asked for and answered page by page, outbox-paced reads, errors."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest
from starlette.datastructures import Headers

from gateway.auth import ANONYMOUS, Authenticator, Principal
from gateway.config import GatewayConfig
from gateway.fanout import Fanout, Item
from gateway.session import (
    MAX_BACKLOG,
    Rejected,
    ReplayRead,
    RunHead,
    Session,
    SessionLimits,
    Unavailable,
    admit,
)
from gateway.wire import CLOSE_TOO_BIG, TextFrame
from pgflow.errors import DatabaseUnavailableError, UnknownRunError

RUN = "00000000-0000-0000-0000-00000000000a"
OTHER = "00000000-0000-0000-0000-00000000000b"
SECRET = "s" * 40


class Reads:
    """The relay as a session sees it: records what it is asked to read."""

    def __init__(self) -> None:
        self.replays: list[ReplayRead] = []
        self.runs: list[str] = []

    def request_read(self, run_id: str) -> None:
        self.runs.append(run_id)

    def request_replay(self, read: ReplayRead) -> None:
        self.replays.append(read)

    def next(self) -> ReplayRead:
        assert self.replays, "no replay was asked for"
        return self.replays.pop(0)


def make(*, config: GatewayConfig | None = None, fanout: Fanout | None = None,
         principal: Principal = ANONYMOUS,
         max_subscriptions: int = 10) -> tuple[Session, Reads, list[bool]]:
    reads = Reads()
    holds: list[bool] = []
    session = Session(
        1, principal, fanout=fanout or Fanout(),
        auth=Authenticator(config or GatewayConfig(), {}), reads=reads,
        limits=SessionLimits(max_frame_bytes=1024, max_subscriptions=max_subscriptions),
        hold_reading=holds.append,
    )
    return session, reads, holds


def events(first: int, last: int, size: int = 10) -> list[Item]:
    return [(seq, TextFrame(orjson.dumps({"type": "event", "run_id": RUN, "seq": seq}).decode()),
             size) for seq in range(first, last + 1)]


def sent(session: Session) -> list[dict[str, Any]]:
    return [orjson.loads(frame.text) for frame in session.client.take()]


def subscribe(session: Session, run_id: str = RUN, since: int = 0) -> None:
    session.receive(orjson.dumps({"type": "subscribe", "run_id": run_id,
                                  "since": since}).decode())


def answer(session: Session, read: ReplayRead, items: list[Item], *, last_seq: int,
           complete: bool = True, owner: str | None = None) -> None:
    head = RunHead("chain", owner, last_seq) if read.first else None
    session.replay_read(read, head, items, complete=complete, epoch=0)


def test_a_subscribe_asks_for_its_replay_and_sends_nothing_before_the_answer() -> None:
    session, reads, _ = make()
    subscribe(session, since=2)
    read = reads.next()
    assert (read.run_id, read.since, read.first) == (RUN, 2, True)
    assert session.client.frames == []
    answer(session, read, events(3, 5), last_seq=5)
    messages = sent(session)
    assert messages[0] == {"type": "subscribed", "run_id": RUN, "seq": 5}
    assert [m["seq"] for m in messages[1:]] == [3, 4, 5]
    assert read.sub.live
    assert reads.replays == []
    assert reads.runs == []


def test_messages_wait_behind_a_replay_and_are_answered_in_order() -> None:
    session, reads, _ = make()
    subscribe(session)
    session.receive('{"type": "ping", "id": 1}')
    session.receive(orjson.dumps({"type": "unsubscribe", "run_id": RUN}).decode())
    assert session.client.frames == []  # the ping waits for the replay
    answer(session, reads.next(), events(1, 2), last_seq=2)
    assert [m["type"] for m in sent(session)] == [
        "subscribed", "event", "event", "pong", "unsubscribed"]
    assert session.fanout.subscription_count == 0


def test_a_second_subscribe_in_the_backlog_starts_its_own_replay_after_the_first() -> None:
    session, reads, _ = make()
    subscribe(session)
    subscribe(session, OTHER)
    session.receive('{"type": "ping", "id": 2}')
    first = reads.next()
    assert reads.replays == []
    answer(session, first, [], last_seq=0)
    second = reads.next()
    assert second.run_id == OTHER
    assert [m["type"] for m in sent(session)] == ["subscribed"]  # the ping waits for OTHER
    answer(session, second, [], last_seq=0)
    assert [m["type"] for m in sent(session)] == ["subscribed", "pong"]


def test_a_full_backlog_holds_reading_until_the_replay_is_done() -> None:
    session, reads, holds = make()
    subscribe(session)
    for number in range(MAX_BACKLOG):
        session.receive(f'{{"type": "ping", "id": {number}}}')
    assert holds == [True]
    answer(session, reads.next(), [], last_seq=0)
    assert holds == [True, False]
    assert [m["id"] for m in sent(session)[1:]] == list(range(MAX_BACKLOG))


def test_the_next_page_is_asked_for_once_the_outbox_was_taken() -> None:
    fanout = Fanout(max_frames=8)  # soft limit: 4 frames
    session, reads, _ = make(fanout=fanout)
    subscribe(session)
    first = reads.next()
    answer(session, first, events(1, 6), last_seq=10, complete=False)
    assert reads.replays == []  # the outbox holds a soft limit's worth: wait
    assert [m.get("seq") for m in sent(session)] == [10, 1, 2, 3]
    assert session.wants_outbox_taken
    session.took_outbox()
    page = reads.next()
    assert (page.since, page.first) == (3, False)
    answer(session, page, events(4, 10), last_seq=10)
    assert [m["seq"] for m in sent(session)] == [4, 5, 6, 7]
    session.took_outbox()
    answer(session, reads.next(), events(8, 10), last_seq=10)
    assert [m["seq"] for m in sent(session)] == [8, 9, 10]
    assert first.sub.live


def test_an_unknown_run_is_an_error_frame_and_no_subscription() -> None:
    session, reads, _ = make()
    subscribe(session)
    read = reads.next()
    session.replay_failed(read, UnknownRunError(f"unknown run {RUN}"))
    assert sent(session) == [{"type": "error", "code": "not_found",
                              "message": f"unknown run {RUN}", "run_id": RUN}]
    assert session.fanout.subscription_count == 0


def test_a_database_outage_during_a_replay_is_unavailable() -> None:
    session, reads, _ = make()
    subscribe(session)
    session.replay_failed(reads.next(), DatabaseUnavailableError("down"))
    assert sent(session)[0]["code"] == "unavailable"


def test_a_run_of_another_user_is_refused_after_its_first_page() -> None:
    config = GatewayConfig(jwt_secret=SECRET)
    session, reads, _ = make(config=config, principal=Principal(subject="bob", authenticated=True))
    subscribe(session)
    answer(session, reads.next(), events(1, 2), last_seq=2, owner="alice")
    messages = sent(session)
    assert [(m["type"], m.get("code")) for m in messages] == [("error", "forbidden")]
    assert session.fanout.subscription_count == 0


def test_too_many_subscriptions_are_refused_without_a_read() -> None:
    session, reads, _ = make(max_subscriptions=1)
    subscribe(session)
    answer(session, reads.next(), [], last_seq=0)
    subscribe(session, OTHER)
    assert reads.replays == []
    assert sent(session)[-1]["code"] == "too_many_subscriptions"


def test_a_frame_over_the_limit_is_explained_then_closed_with_1009() -> None:
    session, _, _ = make()
    session.receive("x" * 2000)
    client = session.client
    assert client.close_code == CLOSE_TOO_BIG
    assert [orjson.loads(f.text)["code"] for f in client.frames] == ["too_large"]


def test_binary_frames_and_bad_json_are_bad_requests() -> None:
    session, _, _ = make()
    session.receive(10)
    session.receive("{nope")
    session.receive('{"type": "subscribe", "run_id": "nope"}')
    assert [m["code"] for m in sent(session)] == ["bad_request", "bad_json", "bad_request"]


def test_a_replay_left_behind_a_gap_asks_the_relay_to_read_the_run() -> None:
    fanout = Fanout()
    session, reads, _ = make(fanout=fanout)
    subscribe(session)
    read = reads.next()
    fanout.publish(RUN, 5, TextFrame("live 5"), 6)  # committed after the replay's snapshot
    answer(session, read, events(1, 2), last_seq=2)
    assert reads.runs == [RUN]


def test_a_closed_session_takes_no_answer() -> None:
    session, reads, _ = make()
    subscribe(session)
    read = reads.next()
    session.closed()
    assert not session.start_read(read)
    answer(session, read, events(1, 1), last_seq=1)
    assert session.client.frames == []
    assert session.fanout.clients == set()


@pytest.mark.parametrize(("serving", "open_now", "origin", "expected"), [
    (False, 0, None, Unavailable),
    (True, 5, None, Unavailable),
    (True, 0, "https://elsewhere.example", Rejected),
    (True, 0, None, Principal),
])
def test_admission(serving: bool, open_now: int, origin: str | None, expected: type) -> None:
    refused: Counter[str] = Counter()
    headers = Headers({"origin": origin} if origin else {})
    verdict = admit(headers, b"", serving=serving, open_now=open_now, limit=5,
                    auth=Authenticator(GatewayConfig(), {}), refused=refused)
    assert isinstance(verdict, expected)
    assert sum(refused.values()) == (0 if expected is Principal else 1)


def test_a_bad_token_is_rejected_with_a_readable_reason() -> None:
    refused: Counter[str] = Counter()
    verdict = admit(Headers({}), b"token=garbage", serving=True, open_now=0, limit=5,
                    auth=Authenticator(GatewayConfig(jwt_secret=SECRET), {}), refused=refused)
    assert isinstance(verdict, Rejected)
    assert verdict.error.code == "unauthorized"
    assert refused == Counter({"unauthorized": 1})
