"""The Python client (``pgflow.Client``) against a real database and an in-process worker:
results, errors, events in order and once (across a first read racing the live feed, and a
lost LISTEN connection), one LISTEN connection for many runs, and steering."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from pgflow import Flow, StepContext
from pgflow.client import Client, ClientClosedError
from pgflow.client._follow import Follower, Following
from pgflow.db.store import Store
from pgflow.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    FlowCancelledError,
    FlowFailedError,
    IdempotencyConflictError,
    InputRejectedError,
    UnknownRunError,
    UnknownStepError,
)
from tests.integration.worker_helpers import running, wait_for_run, wait_until

APP = "pgflow-client-test"
GATE_LIMIT = 10.0  # seconds a gated handler waits at most, so a failing test cannot hang
RESULT_TIMEOUT = 10.0  # seconds


@pytest.fixture
async def client(db_url: str) -> AsyncIterator[Client]:
    async with Client(db_url, application_name=APP, pool_size=3) as opened:
        yield opened


def chain(slug: str, length: int) -> Flow:
    """Steps s0 -> s1 -> ... each adding 1 to the count."""
    flow = Flow(slug, max_attempts=1)
    previous: str | None = None
    for i in range(length):
        flow.step(f"s{i}", depends_on=[previous] if previous else [])(_adds_one(previous))
        previous = f"s{i}"
    return flow


def _adds_one(previous: str | None) -> Callable[[Any], Any]:
    async def handler(input: Any) -> dict[str, int]:
        count = input["run"]["n"] if previous is None else input[previous]["n"]
        return {"n": count + 1}
    return handler


class Gates:
    """Gated steps: each handler waits until its gate (by run input "key" and step) opens."""

    def __init__(self) -> None:
        self._gates: dict[tuple[Any, str], asyncio.Event] = {}
        self.entered: dict[tuple[Any, str], asyncio.Event] = {}

    def gate(self, key: Any, step: str) -> asyncio.Event:
        return self._gates.setdefault((key, step), asyncio.Event())

    def reached(self, key: Any, step: str) -> asyncio.Event:
        return self.entered.setdefault((key, step), asyncio.Event())

    def open(self, key: Any, step: str) -> None:
        self.gate(key, step).set()

    def handler(self, step: str) -> Callable[..., Any]:
        async def run(input: Any) -> dict[str, Any]:
            key = input["run"]["key"]
            self.reached(key, step).set()
            async with asyncio.timeout(GATE_LIMIT):
                await self.gate(key, step).wait()
            return {"step": step, "key": key}
        return run


def gated(slug: str, gates: Gates, steps: int = 3) -> Flow:
    flow = Flow(slug, max_attempts=1)
    for i in range(steps):
        flow.step(f"g{i}", depends_on=[f"g{i - 1}"] if i else [])(gates.handler(f"g{i}"))
    return flow


fails = Flow("client_fails", max_attempts=1)


@fails.step()
async def ok(input: Any) -> int:
    return 1


@fails.step(depends_on=[ok])
async def boom(input: Any) -> None:
    raise ValueError("no luck")


async def collect(client: Client, run_id: uuid.UUID, since: int = 0) -> list[dict[str, Any]]:
    async with asyncio.timeout(RESULT_TIMEOUT):
        return [event async for event in client.events(run_id, since=since)]


async def connections(conn: Any, application_name: str) -> int:
    count: int = await conn.fetchval(
        "select count(*) from pg_stat_activity where datname = current_database() "
        "and application_name = $1", application_name)
    return count


# -- results ---------------------------------------------------------------------------------


async def test_start_then_result_returns_the_runs_output(db_url: str, client: Client) -> None:
    async with running(db_url, [chain("client_chain", 3)]):
        run = await client.start("client_chain", {"n": 1})
        assert await run.result(timeout=RESULT_TIMEOUT) == {"n": 4}
        snapshot = await run.get()
    assert snapshot is not None
    assert snapshot["status"] == "completed"
    assert snapshot["run_id"] == str(run.run_id)


async def test_result_of_a_run_that_already_ended_returns_at_once(
    db_url: str, store: Store, client: Client
) -> None:
    async with running(db_url, [chain("client_chain", 2), fails]):
        done = await store.run_flow("client_chain", {"n": 0})
        failed = await store.run_flow("client_fails", None)
        await wait_for_run(store, done)
        await wait_for_run(store, failed)
    # no worker now: nothing but the log can answer
    assert await client.result(done, timeout=RESULT_TIMEOUT) == {"n": 2}
    assert await client.run(str(done)).result(timeout=RESULT_TIMEOUT) == {"n": 2}
    with pytest.raises(FlowFailedError) as caught:
        await client.result(failed, timeout=RESULT_TIMEOUT)
    assert (caught.value.run_id, caught.value.step_slug) == (str(failed), "boom")
    assert caught.value.error == "ValueError: no luck"
    assert client.feed.log_reads == 0  # the snapshot said it all


async def test_a_failed_run_raises_flow_failed_error_with_its_step_and_error(
    db_url: str, client: Client
) -> None:
    async with running(db_url, [fails]):
        run = await client.start("client_fails", {"x": 1})
        with pytest.raises(FlowFailedError) as caught:
            await run.result(timeout=RESULT_TIMEOUT)
    assert caught.value.run_id == str(run.run_id)
    assert caught.value.step_slug == "boom"
    assert caught.value.error == "ValueError: no luck"
    assert "boom" in str(caught.value)
    assert "no luck" in str(caught.value)


async def test_result_times_out_with_timeout_error_and_stops_following(
    db_url: str, client: Client
) -> None:
    gates = Gates()
    async with running(db_url, [gated("client_gated", gates, steps=1)]):
        run = await client.start("client_gated", {"key": 1})
        with pytest.raises(TimeoutError):
            await run.result(timeout=0.2)
        assert len(client.feed.following) == 0
        gates.open(1, "g0")
        assert await run.result(timeout=RESULT_TIMEOUT) == {"step": "g0", "key": 1}


async def test_unknown_runs(client: Client) -> None:
    missing = uuid.uuid4()
    assert await client.get_run(missing) is None
    assert await client.get_run("not-a-uuid") is None
    with pytest.raises(UnknownRunError):
        await client.result(missing, timeout=RESULT_TIMEOUT)
    with pytest.raises(UnknownRunError):
        await client.result("not-a-uuid")
    with pytest.raises(UnknownRunError):
        await collect(client, missing)
    assert len(client.feed.following) == 0


async def test_fifty_runs_awaited_at_once_share_one_listen_connection(
    db_url: str, conn: Any
) -> None:
    gates = Gates()
    async with Client(db_url, application_name=APP, pool_size=3) as client, \
            running(db_url, [gated("client_gated", gates, steps=1)], concurrency=50):
        runs = [await client.start("client_gated", {"key": i}) for i in range(50)]
        waits = [asyncio.create_task(run.result(timeout=RESULT_TIMEOUT)) for run in runs]

        async def all_followed() -> bool:
            return len(client.feed.following) == 50

        await wait_until(all_followed, timeout=RESULT_TIMEOUT, what="50 runs followed")
        assert await connections(conn, f"{APP}:listen") == 1
        assert 1 <= await connections(conn, APP) <= 3  # the pool, never a connection per run
        for i in range(50):
            gates.open(i, "g0")
        results = await asyncio.gather(*waits)
        assert results == [{"step": "g0", "key": i} for i in range(50)]
        assert await connections(conn, f"{APP}:listen") == 1
        assert len(client.feed.following) == 0
    assert await connections(conn, f"{APP}:listen") == 0
    assert await connections(conn, APP) == 0


# -- events ----------------------------------------------------------------------------------


async def test_events_of_an_ended_run_are_its_log_and_then_end(
    db_url: str, store: Store, client: Client
) -> None:
    async with running(db_url, [chain("client_chain", 3)]):
        run_id = await store.run_flow("client_chain", {"n": 0})
        await wait_for_run(store, run_id)
    log = await store.get_run_events(run_id)
    assert await collect(client, run_id) == log
    assert await collect(client, run_id, since=3) == log[3:]
    assert await collect(client, run_id, since=len(log)) == []  # ends: the last one is terminal
    with pytest.raises(ValueError, match="past the last event"):
        await collect(client, run_id, since=len(log) + 1)


async def test_events_equal_the_log_while_runs_progress_during_the_subscription(
    db_url: str, store: Store, client: Client
) -> None:
    """Subscriptions start at every point of their runs' progress (before, during, after):
    each sees exactly the log, in order, no event twice, none missing."""
    flow = chain("client_chain", 6)
    async with running(db_url, [flow], concurrency=20):
        runs = [await client.start("client_chain", {"n": i}) for i in range(20)]

        async def follow(i: int) -> tuple[uuid.UUID, list[dict[str, Any]]]:
            for _ in range(i):  # subscribe a little later each time
                await asyncio.sleep(0.005)
            return runs[i].run_id, await collect(client, runs[i].run_id)

        seen = await asyncio.gather(*(follow(i) for i in range(20)))
    for run_id, events in seen:
        log = await store.get_run_events(run_id)
        assert events == log
        assert [e["seq"] for e in events] == list(range(1, len(log) + 1))
        assert events[-1]["event"] == "run:completed"


async def test_events_arrive_live_as_gated_steps_complete(
    db_url: str, store: Store, client: Client
) -> None:
    gates = Gates()
    async with running(db_url, [gated("client_gated", gates)]):
        run = await client.start("client_gated", {"key": "k"})
        events = run.events()
        first = await anext(events)
        assert first["event"] == "run:started"
        seen = [first]
        for step in ("g0", "g1", "g2"):
            await asyncio.wait_for(gates.reached("k", step).wait(), GATE_LIMIT)
            gates.open("k", step)
            async with asyncio.timeout(RESULT_TIMEOUT):
                while not (seen[-1]["event"] == "step:completed"
                           and seen[-1]["step_slug"] == step):
                    seen.append(await anext(events))
        async with asyncio.timeout(RESULT_TIMEOUT):
            seen += [event async for event in events]
    assert seen == await store.get_run_events(run.run_id)
    assert seen[-1]["event"] == "run:completed"


async def test_a_stale_first_read_after_the_live_feed_neither_loses_nor_repeats_events(
    db_url: str, store: Store, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first read's snapshot is taken, then the run moves on and its notifications arrive
    before that read's answer: the live events are delivered first, the stale read's repeats
    are dropped."""
    gates = Gates()
    async with running(db_url, [gated("client_gated", gates)]):
        run = await client.start("client_gated", {"key": "k"})
        await asyncio.wait_for(gates.reached("k", "g0").wait(), GATE_LIMIT)
        read = client.store.get_run_replay
        snapshot_taken, answer = asyncio.Event(), asyncio.Event()

        async def stale_read(*args: Any, **kwargs: Any) -> Any:
            replay = await read(*args, **kwargs)
            snapshot_taken.set()
            await asyncio.wait_for(answer.wait(), GATE_LIMIT)
            return replay

        monkeypatch.setattr(client.store, "get_run_replay", stale_read)
        collecting = asyncio.create_task(collect(client, run.run_id))
        await asyncio.wait_for(snapshot_taken.wait(), GATE_LIMIT)
        gates.open("k", "g0")
        await asyncio.wait_for(gates.reached("k", "g1").wait(), GATE_LIMIT)
        (follower,) = client.feed.following.followers()

        async def delivered_live() -> bool:  # run:started, 2 x step:started, step:completed
            return follower.position >= 4

        await wait_until(delivered_live, timeout=RESULT_TIMEOUT, what="the live events")
        answer.set()
        gates.open("k", "g1")
        gates.open("k", "g2")
        events = await collecting
    assert events == await store.get_run_events(run.run_id)


async def test_events_survive_a_lost_listen_connection(
    db_url: str, store: Store, client: Client, conn: Any
) -> None:
    """Notifications sent while the LISTEN connection is down are lost: the client reads the
    log again from the last event it delivered."""
    gates = Gates()
    async with running(db_url, [gated("client_gated", gates)]):
        run = await client.start("client_gated", {"key": "k"})
        collecting = asyncio.create_task(collect(client, run.run_id))
        await asyncio.wait_for(gates.reached("k", "g0").wait(), GATE_LIMIT)
        listener = client.feed.listener
        assert listener.backend_pid is not None
        await conn.execute("select pg_terminate_backend($1)", listener.backend_pid)

        async def disconnected() -> bool:
            return not listener.connected

        await wait_until(disconnected, timeout=RESULT_TIMEOUT, what="the listener to notice")
        for step in ("g0", "g1", "g2"):  # while it reconnects, or after
            gates.open("k", step)
        events = await collecting
        assert listener.reconnects >= 1
    assert events == await store.get_run_events(run.run_id)
    assert events[-1]["event"] == "run:completed"


async def test_open_says_why_it_cannot_connect(db_url: str) -> None:
    parts = urlsplit(db_url)
    with pytest.raises(ConfigurationError, match="refused"):  # no such database
        await Client(urlunsplit(parts._replace(path="/no_such_database"))).open()
    with pytest.raises(DatabaseUnavailableError):  # nothing listens on port 1
        await Client("postgresql://postgres@127.0.0.1:1/x", connect_timeout=2).open()
    client = Client(db_url)
    with pytest.raises(RuntimeError, match="not open"):
        await client.get_run(uuid.uuid4())


async def test_closing_the_client_fails_its_waiters(db_url: str) -> None:
    gates = Gates()
    async with running(db_url, [gated("client_gated", gates, steps=1)]):
        client = await Client(db_url, application_name=APP).open()
        run = await client.start("client_gated", {"key": 1})
        waiting = asyncio.create_task(run.result(timeout=RESULT_TIMEOUT))

        async def followed() -> bool:
            return len(client.feed.following) == 1

        await wait_until(followed, timeout=RESULT_TIMEOUT, what="the run followed")
        await client.close()
        await client.close()  # idempotent
        with pytest.raises(ClientClosedError):
            await waiting
        gates.open(1, "g0")


# -- the pure core ---------------------------------------------------------------------------


def _event(seq: int, name: str = "step:started") -> dict[str, Any]:
    return {"run_id": "r", "seq": seq, "event": name}


def test_a_follower_takes_each_event_once_in_order_and_reports_gaps() -> None:
    follower = Follower("r", 0, keep=True)
    assert follower.take([_event(1), _event(2)], complete=True) is False
    assert follower.take([_event(2), _event(3)], complete=True) is False  # 2 repeats
    assert follower.take([_event(5)], complete=True) is True  # 4 is missing: read the log
    assert [e["seq"] for e in follower.events] == [1, 2, 3]
    assert follower.read_from == 3


def test_a_terminal_event_ends_a_follower_only_when_nothing_follows_it() -> None:
    follower = Follower("r", 0, keep=True)
    retried = [_event(1, "run:started"), _event(2, "run:failed"), _event(3, "run:retried")]
    follower.take(retried, complete=True)
    assert not follower.ended  # the log goes on past run:failed
    follower.take([_event(4, "run:completed")], complete=False)
    assert not follower.ended  # a full page: more may follow
    follower.take([], complete=True)
    assert follower.ended


def test_a_follower_placed_at_since_learns_whether_that_event_ended_the_run() -> None:
    follower = Follower("r", 2, keep=True)
    assert follower.read_from == 1  # reads the event at `since` too
    follower.take([_event(2, "run:completed")], complete=True)
    assert follower.ended
    assert not follower.events


def test_following_routes_inline_events_and_refs_to_the_runs_followed() -> None:
    following = Following()
    follower = Follower("r", 0, keep=True)
    following.add(follower)
    assert following.route({"v": 1, "events": [_event(1), {**_event(1), "run_id": "x"}]}) == []
    assert following.route({"v": 1, "events": [_event(3)]}) == ["r"]
    assert following.route({"v": 1, "refs": [{"run_id": "r", "from": 2, "to": 4},
                                              {"run_id": "x", "from": 1, "to": 9}]}) == ["r"]
    assert following.read_since("r") == 1
    following.remove(follower)
    assert "r" not in following


# -- steering (cancel, retry, idempotency, input steps) --------------------------------------


async def test_cancel_makes_result_raise_flow_cancelled_error_with_the_reason(
    db_url: str, store: Store, client: Client
) -> None:
    gates = Gates()
    async with running(db_url, [gated("client_gated", gates)]):
        run = await client.start("client_gated", {"key": "k"})
        waiting = asyncio.create_task(run.result(timeout=RESULT_TIMEOUT))
        await asyncio.wait_for(gates.reached("k", "g0").wait(), GATE_LIMIT)
        assert await run.cancel("changed my mind") is True
        with pytest.raises(FlowCancelledError) as caught:
            await waiting
        assert (caught.value.run_id, caught.value.reason) == (str(run.run_id), "changed my mind")
        with pytest.raises(FlowCancelledError):  # ended: from the snapshot
            await run.result(timeout=RESULT_TIMEOUT)
        assert await run.cancel() is False
        events = await collect(client, run.run_id)
    assert events == await store.get_run_events(run.run_id)
    assert [e["event"] for e in events[-4:]] == [
        "step:cancelled", "step:cancelled", "step:cancelled", "run:cancelled"]
    assert events[-1]["reason"] == "changed my mind"
    with pytest.raises(UnknownRunError):
        await client.cancel(uuid.uuid4())


async def test_the_same_idempotency_key_returns_the_same_run(
    db_url: str, client: Client
) -> None:
    async with running(db_url, [chain("client_chain", 1)]):
        first = await client.start("client_chain", {"n": 1}, idempotency_key="order-1")
        again = await client.start("client_chain", {"n": 1}, idempotency_key="order-1")
        assert again.run_id == first.run_id
        at_once = await asyncio.gather(*(
            client.start("client_chain", {"n": 5}, idempotency_key="order-2") for _ in range(5)))
        assert len({run.run_id for run in at_once}) == 1
        other = await client.start("client_chain", {"n": 1}, idempotency_key="order-3")
        assert other.run_id != first.run_id
        with pytest.raises(IdempotencyConflictError):
            await client.start("client_chain", {"n": 2}, idempotency_key="order-1")
        assert await first.result(timeout=RESULT_TIMEOUT) == {"n": 2}


flaky_once = Flow("client_flaky_once", max_attempts=1)
_failed_runs: set[str] = set()


@flaky_once.step()
async def first(input: Any) -> int:
    return 1


@flaky_once.step(depends_on=[first])
async def second(input: Any, context: StepContext) -> dict[str, int]:
    if str(context.run_id) not in _failed_runs:
        _failed_runs.add(str(context.run_id))
        raise RuntimeError("first time unlucky")
    return {"total": input["first"] + 1}


async def test_retry_runs_a_failed_run_again_and_result_then_gets_its_output(
    db_url: str, store: Store, client: Client
) -> None:
    async with running(db_url, [flaky_once]):
        run = await client.start("client_flaky_once", None)
        with pytest.raises(FlowFailedError):
            await run.result(timeout=RESULT_TIMEOUT)
        assert await run.retry() is True
        assert await run.result(timeout=RESULT_TIMEOUT) == {"total": 2}
        assert await run.retry() is False  # completed
    log = await store.get_run_events(run.run_id)
    names = [e["event"] for e in log]
    assert names.index("run:failed") < names.index("run:retried") < names.index("run:completed")
    # the log goes on past run:failed: an iteration over it ends at run:completed only
    assert await collect(client, run.run_id) == log
    with pytest.raises(UnknownRunError):
        await client.retry(uuid.uuid4())


approval = Flow("client_approval", max_attempts=1)


@approval.step()
async def prepare(input: Any) -> dict[str, Any]:
    return {"amount": input["run"]["amount"]}


approval.input_step("approve", depends_on=[prepare], schema={
    "type": "object", "required": ["ok"], "additionalProperties": False,
    "properties": {"ok": {"type": "boolean"}, "note": {"type": "string"}},
})


@approval.step(depends_on=["approve", prepare])
async def finish(input: Any) -> dict[str, Any]:
    return {"amount": input["prepare"]["amount"], "approved": input["approve"]["ok"]}


async def test_submit_checks_the_value_against_the_schema_then_completes_the_input_step(
    db_url: str, store: Store, client: Client
) -> None:
    async with running(db_url, [approval]):
        run = await client.start("client_approval", {"amount": 12})
        async with asyncio.timeout(RESULT_TIMEOUT):
            async for event in run.events():
                if event["event"] == "step:waiting":
                    break
        assert event["step_slug"] == "approve"
        assert event["input"] == {"run": {"amount": 12}, "prepare": {"amount": 12}}

        with pytest.raises(InputRejectedError) as caught:
            await run.submit("approve", {"ok": "yes", "extra": 1})
        assert caught.value.step_slug == "approve"
        assert [e["path"] for e in caught.value.errors] == ["", "/ok"]
        with pytest.raises(UnknownStepError):
            await run.submit("no_such_step", {"ok": True})
        with pytest.raises(UnknownRunError):
            await client.submit(uuid.uuid4(), "approve", {"ok": True})
        assert await run.submit("prepare", {"ok": True}) is False  # a task step: never waiting
        assert (await run.get() or {})["status"] == "started"  # the rejected values did nothing

        assert await run.submit("approve", {"ok": True, "note": "fine"}) is True
        assert await run.submit("approve", {"ok": False}) is False  # answered already
        assert await run.result(timeout=RESULT_TIMEOUT) == {"amount": 12, "approved": True}
    events = await collect(client, run.run_id)
    assert events == await store.get_run_events(run.run_id)
    submitted = next(e for e in events
                     if e["event"] == "step:completed" and e["step_slug"] == "approve")
    assert submitted["output"] == {"ok": True, "note": "fine"}


# -- map steps ------------------------------------------------------------------------------

client_map = Flow("client_map", max_attempts=2, base_delay=0)


@client_map.map(over="run", output=True)
async def doubled(input: Any) -> int:
    return int(input["item"]) * 2


async def test_a_map_runs_result_and_its_task_events_through_the_client(
        db_url: str, client: Client) -> None:
    async with running(db_url, [client_map]):
        run = await client.start("client_map", list(range(25)))
        assert await run.result(timeout=RESULT_TIMEOUT) == [i * 2 for i in range(25)]
        events = [e async for e in run.events()]
    completed = sorted(e["index"] for e in events if e["event"] == "task:completed")
    assert completed == list(range(25))
    assert all(e["step_slug"] == "doubled" for e in events if e["event"].startswith("task:"))
    assert [e["event"] for e in events][-2:] == ["step:completed", "run:completed"]
