"""The worker in this process against a real database: handlers, retries, timeouts, threads,
batching, leases, shutdown and lost connections."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from datetime import datetime
from typing import Any

import orjson
import pytest

from examples import flows as examples
from pgflow import Flow, StepContext
from pgflow.db.connection import connect
from pgflow.db.store import Store
from pgflow.errors import DatabaseUnavailableError
from pgflow.worker import StuckThreadsError, Worker, _attempts, sync_flows
from pgflow.worker._retry import RETRY_MAX_DELAY, retry_delay
from tests.integration.gateway_harness import running_gateway
from tests.integration.worker_helpers import QUICK_POLL, running, step_of, wait_for_run, wait_until

NO_POLL = 30.0  # seconds: longer than any test, so that only a NOTIFY or a timer wakes it
BLOCK_LIMIT = 10.0  # seconds a gated handler waits at most, so a failing test cannot hang


async def events_of(store: Store, run_id: uuid.UUID) -> list[dict[str, Any]]:
    return await store.get_run_events(run_id)


def at(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["at"])


def test_the_reconnect_backoff_grows_is_capped_and_jittered() -> None:
    delays = [retry_delay(n) for n in range(1, 40)]
    assert delays[0] <= 0.1
    assert all(d <= RETRY_MAX_DELAY for d in delays)
    assert max(delays[-10:]) >= RETRY_MAX_DELAY / 2
    assert len({retry_delay(10) for _ in range(20)}) > 1


# -- shapes ------------------------------------------------------------------------------------

def _shape_v1() -> Flow:
    flow = Flow("shaped")

    @flow.step()
    async def a(input: Any) -> int:
        return 1

    return flow


def _shape_v2() -> Flow:
    flow = _shape_v1()

    @flow.step(depends_on=["a"])
    async def b(input: Any) -> int:
        return 2

    return flow


async def test_sync_flows_defines_a_flow_and_accepts_its_unchanged_shape(store: Store) -> None:
    await sync_flows(store, [_shape_v1()])
    await sync_flows(store, [_shape_v1()])
    shape = await store.get_flow("shaped")
    assert shape is not None
    assert [s["slug"] for s in shape["steps"]] == ["a"]


async def test_sync_flows_makes_a_changed_shape_the_next_version_and_old_code_keeps_its_own(
    store: Store, caplog: pytest.LogCaptureFixture,
) -> None:
    assert await sync_flows(store, [_shape_v1()]) == {"shaped": 1}
    with caplog.at_level(logging.INFO, logger="pgflow.db.definitions"):
        assert await sync_flows(store, [_shape_v2()]) == {"shaped": 2}
        assert "flow shaped: its shape changed: it is now version 2" in caplog.text
        caplog.clear()
        # a process still running the old code serves version 1, and says so
        assert await sync_flows(store, [_shape_v1()]) == {"shaped": 1}
        assert ("flow shaped: this code is its version 1, but version 2 is the newest"
                in caplog.text)


# -- handlers ----------------------------------------------------------------------------------

inputs = Flow("inputs", max_attempts=1)


@inputs.step()
async def root(input: Any) -> dict[str, Any]:
    return {"from_root": input["run"]["x"] * 2}


@inputs.step(depends_on=[root])
def echo(input: Any, context: StepContext) -> dict[str, Any]:
    return {"input": input, "step": context.step_slug, "attempt": context.attempt,
            "run_id": str(context.run_id), "thread": threading.current_thread().name}


async def test_a_handler_gets_the_run_input_its_dependencies_outputs_and_a_context(
    db_url: str, store: Store
) -> None:
    async with running(db_url, [inputs]):
        run_id = await store.run_flow("inputs", {"x": 21})
        run = await wait_for_run(store, run_id)
    assert run["status"] == "completed", run
    output = run["output"]
    assert output["input"] == {"run": {"x": 21}, "root": {"from_root": 42}}
    assert (output["step"], output["attempt"], output["run_id"]) == ("echo", 1, str(run_id))
    assert output["thread"].startswith("pgflow-handler")  # a plain function runs in a thread


async def test_the_flaky_example_succeeds_on_the_attempt_its_context_reports(
    db_url: str, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(examples, "DELAY_SCALE", 0.05)
    async with running(db_url, [examples.flaky]):
        run_id = await store.run_flow("flaky", examples.flaky.example_input)
        run = await wait_for_run(store, run_id)
    assert run["status"] == "completed", run
    assert run["output"] == {"order": "A-1001", "charged": 42, "attempts": 3}
    assert step_of(run, "charge")["attempt"] == 3
    retries = [e for e in await events_of(store, run_id) if e["event"] == "step:retrying"]
    assert [e["error"] for e in retries] == [
        "ConnectionError: payment service unavailable (attempt 1)",
        "ConnectionError: payment service unavailable (attempt 2)",
    ]


fails = Flow("fails", max_attempts=1)


@fails.step()
async def raises(input: Any) -> None:
    raise ValueError(f"bad input {input['run']}")


not_json = Flow("not_json", max_attempts=1)


@not_json.step()
async def returns_a_set(input: Any) -> Any:
    return {"tags": {"a", "b"}}


async def test_a_handler_that_raises_fails_with_its_exception_type_and_text(
    db_url: str, store: Store
) -> None:
    async with running(db_url, [fails]):
        run = await wait_for_run(store, await store.run_flow("fails", 42))
    assert run["status"] == "failed"
    assert step_of(run, "raises")["error"] == "ValueError: bad input 42"
    assert run["error"] == "ValueError: bad input 42"


async def test_an_output_that_is_not_json_fails_the_attempt_with_a_clear_message(
    db_url: str, store: Store
) -> None:
    async with running(db_url, [not_json]):
        run = await wait_for_run(store, await store.run_flow("not_json", None))
    assert run["status"] == "failed"
    error = step_of(run, "returns_a_set")["error"]
    assert error.startswith("step 'returns_a_set' returned dict, which is not JSON"), error
    assert "set" in error.split(":", 1)[1]


# -- retries -----------------------------------------------------------------------------------

RETRY_BASE = 0.2  # seconds

always_fails = Flow("always_fails", max_attempts=3, base_delay=RETRY_BASE)


@always_fails.step()
async def doomed_step(input: Any, context: StepContext) -> None:
    raise RuntimeError(f"no luck on attempt {context.attempt}")


async def test_retries_then_a_final_failure_emit_retrying_failed_and_run_failed_with_backoff(
    db_url: str, store: Store
) -> None:
    async with running(db_url, [always_fails]):
        run_id = await store.run_flow("always_fails", {})
        run = await wait_for_run(store, run_id)
    assert run["status"] == "failed"
    assert run["error"] == "RuntimeError: no luck on attempt 3"
    events = [e for e in await events_of(store, run_id) if e["step_slug"] == "doomed_step"
              and e["event"] != "step:started"]
    assert [(e["event"], e["attempt"]) for e in events] == [
        ("step:retrying", 1), ("step:retrying", 2), ("step:failed", 3), ("run:failed", 3),
    ]
    # base_delay * 2^(attempt-1): the second attempt waited 0.2 s, the third 0.4 s
    first_wait = (at(events[1]) - at(events[0])).total_seconds()
    second_wait = (at(events[2]) - at(events[1])).total_seconds()
    assert first_wait >= RETRY_BASE
    assert second_wait >= 2 * RETRY_BASE
    assert second_wait > first_wait


async def test_a_retry_is_claimed_when_its_backoff_ends_not_at_the_next_poll(
    db_url: str, store: Store
) -> None:
    async with running(db_url, [always_fails], poll_interval=NO_POLL):
        started = time.monotonic()
        run = await wait_for_run(store, await store.run_flow("always_fails", {}), timeout=5)
    assert run["status"] == "failed"
    assert time.monotonic() - started < 5


# -- timeouts and threads ----------------------------------------------------------------------

stuck = Flow("stuck", max_attempts=1, timeout=1)
cancelled_handlers: list[str] = []


@stuck.step()
async def stuck_step(input: Any) -> None:
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        cancelled_handlers.append("stuck_step")
        raise


async def test_a_stuck_async_handler_is_cancelled_at_its_timeout_and_its_attempt_fails(
    db_url: str, store: Store
) -> None:
    cancelled_handlers.clear()
    async with running(db_url, [stuck]):
        run = await wait_for_run(store, await store.run_flow("stuck", {}))
    assert run["status"] == "failed"
    assert step_of(run, "stuck_step")["error"] == "step 'stuck_step' timed out after 1 s"
    assert cancelled_handlers == ["stuck_step"]


sync_gate = threading.Event()
sync_entered = threading.Event()
blocking = Flow("blocking", max_attempts=1, timeout=30)
blocking_past_timeout = Flow("blocking_past_timeout", max_attempts=1, timeout=1)
quick = Flow("quick", max_attempts=1)


@blocking.step()
def blocks_in_a_thread(input: Any) -> dict[str, Any]:
    sync_entered.set()
    released = sync_gate.wait(BLOCK_LIMIT)
    return {"released": released, "thread": threading.current_thread().name}


@blocking_past_timeout.step()
def blocks_past_its_timeout(input: Any) -> None:
    sync_entered.set()
    sync_gate.wait(BLOCK_LIMIT)


@quick.step()
async def quick_step(input: Any) -> int:
    return int(input["run"]) + 1


async def test_a_sync_handler_runs_in_a_thread_while_async_handlers_keep_completing(
    db_url: str, store: Store
) -> None:
    sync_gate.clear()
    sync_entered.clear()
    async with running(db_url, [blocking, quick], concurrency=4):
        blocked = await store.run_flow("blocking", {})

        async def entered() -> bool:
            return sync_entered.is_set()

        await wait_until(entered, timeout=5, what="the sync handler to start")
        quick_runs = [await store.run_flow("quick", n) for n in range(6)]
        outputs = [(await wait_for_run(store, r))["output"] for r in quick_runs]
        still_blocked = await store.get_run(blocked)
        sync_gate.set()
        run = await wait_for_run(store, blocked)
    assert outputs == [1, 2, 3, 4, 5, 6]
    assert still_blocked is not None
    assert still_blocked["status"] == "started"
    assert run["output"]["released"] is True
    assert run["output"]["thread"].startswith("pgflow-handler")


async def test_a_sync_handler_past_its_timeout_frees_its_slot_and_its_thread_is_counted_stuck(
    db_url: str, store: Store
) -> None:
    sync_gate.clear()
    sync_entered.clear()
    # one slot: before the fix, the stuck thread kept it and nothing else ever ran
    async with running(db_url, [blocking_past_timeout, quick, blocking], concurrency=1,
                       max_stuck_threads=5) as worker:
        run = await wait_for_run(store, await store.run_flow("blocking_past_timeout", {}))
        assert run["status"] == "failed"
        error = step_of(run, "blocks_past_its_timeout")["error"]
        assert error == "step 'blocks_past_its_timeout' timed out after 1 s"
        # its thread still runs, counted as stuck; its slot already runs other handlers
        assert worker.stuck_threads == 1
        assert worker.health()["stuck_threads"] == 1
        assert (await wait_for_run(store, await store.run_flow("quick", 1)))["output"] == 2
        # a new plain handler gets a thread of its own, not one queued behind the stuck one
        sync_entered.clear()
        blocked = await store.run_flow("blocking", {})

        async def entered() -> bool:
            return sync_entered.is_set()

        await wait_until(entered, timeout=5, what="a second plain handler to start")
        sync_gate.set()
        assert (await wait_for_run(store, blocked))["output"]["released"] is True

        async def returned() -> bool:
            return worker.stuck_threads == 0

        await wait_until(returned, timeout=5, what="the thread to return")
        assert worker.stuck_threads_total == 1


async def test_a_worker_with_too_many_stuck_threads_drains_and_raises(
    db_url: str, store: Store
) -> None:
    sync_gate.clear()
    worker = Worker(db_url, [blocking_past_timeout], poll_interval=QUICK_POLL, concurrency=2,
                    max_stuck_threads=1)
    await sync_flows(store, [blocking_past_timeout])
    task = asyncio.create_task(worker.run())
    try:
        run = await wait_for_run(store, await store.run_flow("blocking_past_timeout", {}))
        async with asyncio.timeout(5):
            with pytest.raises(StuckThreadsError, match=r"1 plain handler\(s\) stuck .*limit 1"):
                await task
    finally:
        sync_gate.set()
        worker.stop()
        worker.stop()
        await asyncio.wait([task], timeout=5)
    assert run["status"] == "failed"  # reported before the worker stopped


async def test_a_gateway_with_a_worker_shows_its_stuck_threads_in_metrics(
    db_url: str, store: Store
) -> None:
    sync_gate.clear()
    try:
        async with running_gateway(db_url, flows=[blocking_past_timeout], with_worker=True) as gw:
            assert await gw.metric("pgflow_worker_stuck_threads") == 0
            await gw.start_run("blocking_past_timeout", {})

            async def stuck(count: int) -> bool:
                return await gw.metric("pgflow_worker_stuck_threads") == count

            await wait_until(lambda: stuck(1), timeout=5, what="the stuck thread to show")

            async def reported() -> bool:
                return await gw.metric("pgflow_worker_unreported_results") == 0

            await wait_until(reported, timeout=5, what="the timed-out attempt to be reported")
            sync_gate.set()
            await wait_until(lambda: stuck(0), timeout=5, what="the thread to return")
    finally:
        sync_gate.set()


# -- concurrency and batching ------------------------------------------------------------------

gate = asyncio.Event()
in_flight: list[int] = [0, 0]  # now, most ever
gated = Flow("gated", max_attempts=1, timeout=30)
counted = Flow("counted", max_attempts=1)
COUNTED_WORK = 0.05  # seconds each counted handler takes


@gated.step()
async def waits_for_the_gate(input: Any) -> int:
    async with asyncio.timeout(BLOCK_LIMIT):
        await gate.wait()
    return int(input["run"])


@counted.step()
async def counts(input: Any) -> int:
    in_flight[0] += 1
    in_flight[1] = max(in_flight[1], in_flight[0])
    try:
        await asyncio.sleep(COUNTED_WORK)
    finally:
        in_flight[0] -= 1
    return int(input["run"])


counted_chain = Flow("counted_chain")


@counted_chain.step()
async def counted_first(input: Any) -> int:
    return await counts(input)


@counted_chain.step(depends_on=[counted_first])
async def counted_second(input: Any) -> int:
    return await counts({"run": input["counted_first"] + 1})


async def test_reports_claim_the_steps_they_make_ready_within_the_slots(
    db_url: str, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each report claims into the worker's free slots in the same transaction: the second
    steps it made ready, without a wake-up and a claim of their own (the claim loop, which got
    fewer tasks than it asked for, is waiting for one). The claim loop and the reports share
    the slots, so no more than ``concurrency`` handlers ever run."""
    in_flight[:] = [0, 0]
    from_reports: list[int] = []
    report_and_claim = Store.report_and_claim

    async def counting(self: Store, *args: Any, **kwargs: Any) -> Any:
        done, failed, tasks = await report_and_claim(self, *args, **kwargs)
        from_reports.append(len(tasks))
        return done, failed, tasks

    monkeypatch.setattr(Store, "report_and_claim", counting)
    await sync_flows(store, [counted_chain])
    run_ids = [await store.run_flow("counted_chain", n) for n in range(3)]
    async with running(db_url, [counted_chain], concurrency=4):
        runs = [await wait_for_run(store, r) for r in run_ids]
    assert [r["output"] for r in runs] == [n + 1 for n in range(3)]
    assert in_flight[1] <= 4
    assert sum(from_reports) > 0, "no report claimed anything: the path is not exercised"


async def test_no_more_than_concurrency_handlers_run_at_once(db_url: str, store: Store) -> None:
    in_flight[:] = [0, 0]
    await sync_flows(store, [counted])
    run_ids = [await store.run_flow("counted", n) for n in range(12)]
    async with running(db_url, [counted], concurrency=3):
        runs = [await wait_for_run(store, r) for r in run_ids]
    assert [r["output"] for r in runs] == list(range(12))
    assert in_flight[1] == 3


async def test_a_slow_handler_does_not_stop_others_being_claimed_and_run(
    db_url: str, store: Store
) -> None:
    gate.clear()
    async with running(db_url, [gated, quick], concurrency=2):
        slow = await store.run_flow("gated", 7)
        quick_runs = [await store.run_flow("quick", n) for n in range(5)]
        outputs = [(await wait_for_run(store, r))["output"] for r in quick_runs]
        slow_run = await store.get_run(slow)
        gate.set()
        assert (await wait_for_run(store, slow))["output"] == 7
    assert outputs == [1, 2, 3, 4, 5]
    assert slow_run is not None
    assert slow_run["status"] == "started"


async def _leased(store: Store, count: int) -> bool:
    async with store.pool.acquire() as connection:
        held = await connection.fetchval(
            "select count(*) from pgflow.step_states where lease_expires_at is not null"
        )
    return bool(held == count)


async def test_tasks_finishing_together_are_reported_in_few_transactions(
    db_url: str, store: Store
) -> None:
    runs = 40
    gate.clear()
    notifications: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    listener = await connect(db_url)
    try:
        async with running(db_url, [gated], concurrency=runs):
            run_ids = {await store.run_flow("gated", n) for n in range(runs)}
            await wait_until(lambda: _leased(store, runs), timeout=10,
                             what="every task to be claimed")
            await listener.add_listener(
                "pgflow_events", lambda *args: notifications.put_nowait(orjson.loads(args[3]))
            )
            gate.set()  # every handler finishes in the same instant
            finished: set[uuid.UUID] = set()
            received = 0
            async with asyncio.timeout(10):
                while finished != run_ids:
                    payload = await notifications.get()
                    received += 1
                    items = payload.get("events") or payload.get("refs") or []
                    finished.update(uuid.UUID(item["run_id"]) for item in items)
    finally:
        await listener.close()
    # one report per round, not one per step: 40 steps, a handful of transactions
    assert received <= runs // 8, f"{received} notifications for {runs} steps"


# -- leases and shutdown -----------------------------------------------------------------------

LONG_WORK = 1.5  # seconds: several leases long
SHORT_LEASE = 0.5  # seconds
outlives_lease = Flow("outlives_lease", max_attempts=2, timeout=30)


@outlives_lease.step()
async def longer_than_the_lease(input: Any, context: StepContext) -> int:
    await asyncio.sleep(LONG_WORK)
    return context.attempt


async def test_the_heartbeat_keeps_a_running_handler_leased_past_its_lease(
    db_url: str, store: Store
) -> None:
    # concurrency 2: the worker keeps claiming (and sweeping expired leases) meanwhile
    async with running(db_url, [outlives_lease], concurrency=2, lease_seconds=SHORT_LEASE):
        run_id = await store.run_flow("outlives_lease", {})
        run = await wait_for_run(store, run_id)
    assert run["status"] == "completed"
    assert run["output"] == 1
    assert not [e for e in await events_of(store, run_id) if e["event"] == "step:retrying"]


async def test_a_second_stop_cancels_running_handlers_and_releases_their_tasks(
    db_url: str, store: Store
) -> None:
    cancelled_handlers.clear()
    await sync_flows(store, [stuck])
    run_id = await store.run_flow("stuck", {})
    worker = Worker(db_url, [stuck], poll_interval=QUICK_POLL, shutdown_grace=30)
    task = asyncio.create_task(worker.run())
    try:
        await wait_until(lambda: _leased(store, 1), timeout=10, what="the task to be claimed")
        worker.stop()
        await asyncio.sleep(0.1)  # within the grace: the handler is left running
        assert not task.done()
        assert cancelled_handlers == []
        worker.stop()
        async with asyncio.timeout(5):
            await task
    finally:
        worker.stop()
        worker.stop()
        await asyncio.wait([task], timeout=5)
    assert cancelled_handlers == ["stuck_step"]
    async with store.pool.acquire() as connection:
        state = await connection.fetchrow(
            "select status, attempt, leased_by from pgflow.step_states where run_id = $1",
            run_id,
        )
    # back in the queue, and the interrupted attempt is not counted
    assert (state["status"], state["attempt"], state["leased_by"]) == ("started", 0, None)


async def test_cancelling_a_running_worker_gives_its_tasks_back(
    db_url: str, store: Store
) -> None:
    cancelled_handlers.clear()
    await sync_flows(store, [stuck])
    await store.run_flow("stuck", {})
    worker = Worker(db_url, [stuck], poll_interval=QUICK_POLL)
    task = asyncio.create_task(worker.run())
    try:
        await wait_until(lambda: _leased(store, 1), timeout=10, what="the task to be claimed")
        task.cancel()
        async with asyncio.timeout(5):
            with pytest.raises(asyncio.CancelledError):
                await task
    finally:
        worker.stop()
        worker.stop()
        await asyncio.wait([task], timeout=5)
    assert cancelled_handlers == ["stuck_step"]
    assert await _leased(store, 0)


# -- lost connections --------------------------------------------------------------------------

async def _worker_backends(store: Store, application_name: str) -> list[int]:
    async with store.pool.acquire() as connection:
        rows = await connection.fetch(
            "select pid from pg_stat_activity where datname = current_database() "
            "and application_name like $1 and pid <> pg_backend_pid()",
            application_name,
        )
    return [row["pid"] for row in rows]


async def _terminate(store: Store, pids: list[int]) -> None:
    async with store.pool.acquire() as connection:
        await connection.execute("select pg_terminate_backend(p) from unnest($1::int[]) as p",
                                 pids)


async def test_a_terminated_listen_connection_reconnects_and_wakes_the_worker_again(
    db_url: str, store: Store
) -> None:
    async with running(db_url, [quick], poll_interval=NO_POLL):
        # only a NOTIFY can wake a worker that polls every 30 s
        assert (await wait_for_run(store, await store.run_flow("quick", 1), timeout=5))[
            "output"] == 2
        before = await wait_until(lambda: _worker_backends(store, "pgflow worker %"),
                                  timeout=5, what="the listen connection")
        await _terminate(store, before)

        async def reconnected() -> list[int]:
            pids = await _worker_backends(store, "pgflow worker %")
            return [p for p in pids if p not in before]

        await wait_until(reconnected, timeout=5, what="the listen connection to come back")
        run = await wait_for_run(store, await store.run_flow("quick", 2), timeout=5)
    assert run["output"] == 3


async def test_a_worker_whose_connections_are_all_terminated_carries_on(
    db_url: str, store: Store
) -> None:
    gate.clear()
    # named, so that only the worker's connections are terminated, not this test's
    async with running(f"{db_url}?application_name=worker_under_test", [gated, quick]):
        first = await store.run_flow("gated", 1)
        await wait_until(lambda: _leased(store, 1), timeout=10, what="the task to be claimed")
        pids = await _worker_backends(store, "worker_under_test")
        pids += await _worker_backends(store, "pgflow worker %")
        assert len(pids) >= 2  # the pool's and the listener's
        await _terminate(store, pids)
        gate.set()
        assert (await wait_for_run(store, first))["output"] == 1
        assert (await wait_for_run(store, await store.run_flow("quick", 5)))["output"] == 6


# -- what handlers return: every JSON value, and what PostgreSQL cannot store ----------------

RETURNED: dict[str, Any] = {
    "one-element array": [1],
    "array": [1, 2, 3],
    "empty array": [],
    "nested arrays": [[1, [2]], [], [[[]]]],
    "array of objects": [{"a": None}, {"b": [True, False]}],
    "string": "text",
    "empty string": "",
    "number": 1.5,
    "big int": -(2**63),
    "null": None,
    "false": False,
    "empty object": {},
    "unicode": {"clé": "日本語 \U0001f600 \u2028"},
    "backslash u0000": "\\u0000",
}
returns = Flow("returns", max_attempts=1)


@returns.step()
async def returned(input: Any) -> Any:
    return RETURNED[input["run"]] if isinstance(input["run"], str) else input["run"]


async def _outputs_of(store: Store, run_id: uuid.UUID) -> list[Any]:
    run = await wait_for_run(store, run_id)
    assert run["status"] == "completed", run
    events = {e["event"]: e for e in await events_of(store, run_id)}
    return [step_of(run, "returned")["output"], run["output"],
            events["step:completed"]["output"], events["run:completed"]["output"]]


async def test_every_json_value_a_handler_returns_is_stored_exactly(
    db_url: str, store: Store
) -> None:
    async with running(db_url, [returns], concurrency=len(RETURNED)):
        run_ids = {name: await store.run_flow("returns", name) for name in RETURNED}
        # the run's own input handed back: a list input is returned as the list
        as_input = await store.run_flow("returns", [[1, 2], "x"])
        for name, run_id in run_ids.items():
            assert await _outputs_of(store, run_id) == [RETURNED[name]] * 4, name
        assert await _outputs_of(store, as_input) == [[[1, 2], "x"]] * 4


BAD_OUTPUTS: dict[str, tuple[Any, str]] = {
    "nul": ({"s": "a\x00b"}, "U+0000"),
    "nul key": ({"k\x00": 1}, "U+0000"),
    "nul deep": ([[["\x00"]]], "U+0000"),
    "nan": ({"x": float("nan")}, "nan, which JSON has no number for"),
    "infinity": ([float("inf")], "inf, which JSON has no number for"),
    "-infinity": (float("-inf"), "-inf, which JSON has no number for"),
    "huge int": (2**64, "Integer exceeds 64-bit range"),
    "set": ({1, 2}, "not JSON"),
}
GOOD_OUTPUTS: dict[str, Any] = {"list": [1, 2, 3], "one": ["x"], "null": None, "s": "ok"}
mixed = Flow("mixed", max_attempts=1, timeout=30)


@mixed.step()
async def finishes_together(input: Any) -> Any:
    async with asyncio.timeout(BLOCK_LIMIT):
        await gate.wait()
    name = input["run"]
    return GOOD_OUTPUTS[name] if name in GOOD_OUTPUTS else BAD_OUTPUTS[name][0]


async def _run_mixed_batch(db_url: str, store: Store) -> dict[str, dict[str, Any]]:
    """Every good and bad output of one batch (the handlers finish in the same instant)."""
    gate.clear()
    names = [*GOOD_OUTPUTS, *BAD_OUTPUTS]
    async with running(db_url, [mixed], concurrency=len(names)):
        run_ids = {name: await store.run_flow("mixed", name) for name in names}
        await wait_until(lambda: _leased(store, len(names)), timeout=10,
                         what="every task to be claimed")
        gate.set()
        return {name: await wait_for_run(store, run_id) for name, run_id in run_ids.items()}


async def test_a_batch_mixing_good_and_unstorable_outputs_completes_the_good_ones(
    db_url: str, store: Store
) -> None:
    runs = await _run_mixed_batch(db_url, store)
    for name, output in GOOD_OUTPUTS.items():
        assert (runs[name]["status"], runs[name]["output"]) == ("completed", output), name
    for name, (_, reason) in BAD_OUTPUTS.items():
        assert runs[name]["status"] == "failed", name
        error = step_of(runs[name], "finishes_together")["error"]
        assert error.startswith("step 'finishes_together' returned "), error
        assert reason in error, (name, error)


async def test_a_value_postgresql_refuses_fails_only_its_own_attempt(
    db_url: str, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the worker's own check, PostgreSQL is the one refusing: the batch is split.
    monkeypatch.setattr(_attempts, "encode_output", orjson.dumps)
    runs = await _run_mixed_batch(db_url, store)
    for name, output in GOOD_OUTPUTS.items():
        assert (runs[name]["status"], runs[name]["output"]) == ("completed", output), name
    for name in ("nul", "nul key", "nul deep"):
        error = step_of(runs[name], "finishes_together")["error"]
        assert error.startswith(
            "PostgreSQL refused the output of step 'finishes_together': "
            "UntranslatableCharacterError: unsupported Unicode escape sequence"), error


raises_text = Flow("raises_text", max_attempts=1)


@raises_text.step()
async def raises_with(input: Any) -> None:
    raise ValueError(input["run"].replace("NUL", "\x00").replace("SURROGATE", "\ud800"))


async def test_an_exception_message_with_nul_or_a_surrogate_is_stored_made_visible(
    db_url: str, store: Store
) -> None:
    async with running(db_url, [raises_text], concurrency=3):
        nul = await store.run_flow("raises_text", "a NUL b")
        surrogate = await store.run_flow("raises_text", "a SURROGATE b")
        plain = await store.run_flow("raises_text", "plain")
        errors = [step_of(await wait_for_run(store, r), "raises_with")["error"]
                  for r in (nul, surrogate, plain)]
    assert errors == ["ValueError: a \\u0000 b", "ValueError: a \\ud800 b", "ValueError: plain"]


async def test_a_failure_postgresql_refuses_is_dropped_and_its_lease_runs_out(
    db_url: str, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Forced: the error text keeps its NUL, which PostgreSQL's text refuses.
    monkeypatch.setattr(_attempts, "storable", lambda text: text)
    async with running(db_url, [raises_text, quick], lease_seconds=SHORT_LEASE) as worker:
        run = await wait_for_run(store, await store.run_flow("raises_text", "NUL"))
        assert worker.refused_results == 1
        # the worker is not wedged: the next results are reported
        assert (await wait_for_run(store, await store.run_flow("quick", 1)))["output"] == 2
    assert (run["status"], run["error"]) == ("failed", "lease expired")


reported_late = Flow("reported_late", max_attempts=5)


@reported_late.step()
async def reported_late_step(input: Any) -> int:
    return int(input["run"]) + 1


async def test_the_heartbeat_does_not_keep_the_lease_of_a_result_that_cannot_be_reported(
    db_url: str, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    reports_fail = True

    def failing(method: Any) -> Any:
        async def failing_report(self: Store, *args: Any, **kwargs: Any) -> Any:
            if reports_fail:
                raise DatabaseUnavailableError("reports are failing in this test")
            return await method(self, *args, **kwargs)
        return failing_report

    # a report alone, and a report that claims in the same transaction
    monkeypatch.setattr(Store, "report", failing(Store.report))
    monkeypatch.setattr(Store, "report_and_claim", failing(Store.report_and_claim))
    async with running(db_url, [reported_late], lease_seconds=SHORT_LEASE,
                       concurrency=2) as worker:
        run_id = await store.run_flow("reported_late", 1)

        async def lease_expired() -> bool:
            events = await events_of(store, run_id)
            return any(e["event"] == "step:retrying" and e["error"] == "lease expired"
                       for e in events)

        # before the fix the heartbeat extended that lease for as long as the worker lived
        await wait_until(lease_expired, timeout=5, what="the unreported result's lease to end")
        assert worker.unreported >= 1
        reports_fail = False
        run = await wait_for_run(store, run_id)
    assert (run["status"], run["output"]) == ("completed", 2)
    assert step_of(run, "reported_late_step")["attempt"] >= 2


one_step = Flow("one_step", max_attempts=1)


@one_step.step()
async def only_step(input: Any) -> int:
    return int(input["run"]) * 10


async def test_a_hint_that_comes_while_a_reports_claim_holds_every_slot_is_not_lost(
    db_url: str, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A report's claim holds the free slots; meanwhile a new run's wake-up comes, and the claim
    loop finds no slot to claim with. Once the report's claim gives its slots back (it found
    nothing: it ran before the new run committed), the claim loop claims at once; it used to
    wait for the next hint or its poll (here 30 s)."""
    in_report = asyncio.Event()
    let_go = asyncio.Event()

    async def slow_report_and_claim(self: Store, worker_id: str, done: Any, failed: Any,
                                    **_: Any) -> Any:
        in_report.set()
        await let_go.wait()
        applied_done, applied_failed = await self.report(worker_id, done, failed)
        return applied_done, applied_failed, []  # as if its claim found nothing

    monkeypatch.setattr(Store, "report_and_claim", slow_report_and_claim)
    await sync_flows(store, [one_step])
    async with running(db_url, [one_step], concurrency=2, batch_size=2,
                       poll_interval=30) as worker:
        first = await store.run_flow("one_step", 1)
        # its result is being reported, holding the slots; the report readies nothing, so
        # it sends no wake-up of its own
        await asyncio.wait_for(in_report.wait(), 10)
        hint_taken = asyncio.Event()
        wakeup = worker._wakeup
        clear = wakeup.clear

        def taking_clear() -> None:
            if wakeup._event.is_set():
                hint_taken.set()
            clear()

        monkeypatch.setattr(wakeup, "clear", taking_clear)
        second = await store.run_flow("one_step", 2)  # its wake-up finds no free slot
        await asyncio.wait_for(hint_taken.wait(), 10)
        let_go.set()
        assert (await wait_for_run(store, first, timeout=5))["output"] == 10
        assert (await wait_for_run(store, second, timeout=5))["output"] == 20
