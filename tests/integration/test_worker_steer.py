"""The worker and steered runs: a cancelled run's handlers stop (an async one is cancelled, a
plain one sees ``context.cancelled``) and report nothing; input steps are no worker's task;
a retried run runs again."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from pgflow import Flow, StepContext
from pgflow.db.store import Store
from tests.integration.worker_helpers import QUICK_POLL, running, step_of, wait_for_run, wait_until

HANDLER_LIMIT = 20.0  # seconds a handler of these tests waits at most: never reached when it works

async_entered = asyncio.Event()
async_cancelled: list[float] = []
slow_async = Flow("slow_async", max_attempts=1, timeout=60)


@slow_async.step()
async def waits(input: Any) -> None:
    async_entered.set()
    try:
        # an event no one sets: only the run's cancel ends this wait (or the limit, failing)
        async with asyncio.timeout(HANDLER_LIMIT):
            await asyncio.Event().wait()
    except asyncio.CancelledError:
        async_cancelled.append(time.monotonic())
        raise


@slow_async.step(depends_on=[waits])
async def after(input: Any) -> None:
    raise AssertionError("never runs: its run was cancelled")


sync_entered = threading.Event()
sync_saw_cancel: list[bool] = []
slow_sync = Flow("slow_sync", max_attempts=1, timeout=60)


@slow_sync.step()
def polls(input: Any, context: StepContext) -> str:
    sync_entered.set()
    deadline = time.monotonic() + HANDLER_LIMIT
    while not context.cancelled and time.monotonic() < deadline:
        time.sleep(0.01)
    sync_saw_cancel.append(context.cancelled)
    return "returned after the cancel"


async def test_cancelling_a_run_cancels_its_running_async_handler_at_once(
        db_url: str, store: Store) -> None:
    async_entered.clear()
    async_cancelled.clear()
    async with running(db_url, [slow_async], poll_interval=QUICK_POLL) as worker:
        run_id = await store.run_flow("slow_async", {})
        await asyncio.wait_for(async_entered.wait(), 10)
        asked = time.monotonic()
        assert await store.cancel_run(run_id, "user pressed cancel")
        await wait_until(lambda: asyncio.sleep(0, bool(async_cancelled)), timeout=5,
                         what="the handler to be cancelled")
        # about a second at most, as the contract says; a NOTIFY away in practice
        assert async_cancelled[0] - asked < 1.0
        await wait_until(lambda: asyncio.sleep(0, worker.health()["running"] == 0), timeout=5,
                         what="the slot to be free")
        assert worker.cancelled_attempts == 1
    run = await store.get_run(run_id)
    assert run is not None
    assert run["status"] == "cancelled"
    assert run["cancel_reason"] == "user pressed cancel"
    assert [s["status"] for s in run["steps"]] == ["cancelled", "cancelled"]
    events = [e["event"] for e in await store.get_run_events(run_id)]
    assert events == ["run:started", "step:started", "step:cancelled", "step:cancelled",
                      "run:cancelled"]


async def test_a_plain_handler_sees_context_cancelled_and_its_late_result_is_dropped(
        db_url: str, store: Store) -> None:
    sync_entered.clear()
    sync_saw_cancel.clear()
    async with running(db_url, [slow_sync], poll_interval=QUICK_POLL) as worker:
        run_id = await store.run_flow("slow_sync", {})
        await asyncio.to_thread(sync_entered.wait, 10)
        assert await store.cancel_run(run_id)
        await wait_until(lambda: asyncio.sleep(0, bool(sync_saw_cancel)), timeout=5,
                         what="the handler to see the cancel")
        await wait_until(lambda: asyncio.sleep(0, worker.health()["running"] == 0), timeout=5,
                         what="the slot to be free")
    assert sync_saw_cancel == [True]
    events = [e["event"] for e in await store.get_run_events(run_id)]
    assert events[-1] == "run:cancelled"
    assert "step:completed" not in events


approvals = Flow("approvals", max_attempts=1, timeout=10)


@approvals.step()
async def write_draft(input: Any) -> str:
    return f"draft of {input['run']}"


approvals.input_step("sign_off", depends_on=[write_draft], schema={"type": "boolean"})


@approvals.step(depends_on=[write_draft, "sign_off"], output=True)
async def ship(input: Any) -> dict[str, Any]:
    return {"shipped": input["sign_off"], "draft": input["write_draft"]}


async def test_an_input_step_waits_for_its_value_then_the_worker_runs_its_dependents(
        db_url: str, store: Store) -> None:
    async with running(db_url, [approvals], poll_interval=QUICK_POLL):
        run_id = await store.run_flow("approvals", "notes")

        async def waiting() -> bool:
            run = await store.get_run(run_id)
            return run is not None and step_of(run, "sign_off")["status"] == "waiting"

        await wait_until(waiting, timeout=10, what="the input step to wait")
        event = (await store.get_run_events(run_id))[-1]
        assert event["event"] == "step:waiting"
        assert event["input"] == {"run": "notes", "write_draft": "draft of notes"}
        assert await store.submit_input(run_id, "sign_off", True)
        run = await wait_for_run(store, run_id)
    assert run["status"] == "completed"
    assert run["output"] == {"shipped": True, "draft": "draft of notes"}


flaky_once: list[str] = []
recovers = Flow("recovers", max_attempts=1, timeout=10)


@recovers.step()
async def first(input: Any) -> int:
    return 1


@recovers.step(depends_on=[first], output=True)
async def second(input: Any) -> int:
    if not flaky_once:
        flaky_once.append("failed")
        raise RuntimeError("down for now")
    return input["first"] + 1


async def test_a_retried_run_runs_its_failed_step_again_and_completes(
        db_url: str, store: Store) -> None:
    flaky_once.clear()
    async with running(db_url, [recovers], poll_interval=QUICK_POLL):
        run_id = await store.run_flow("recovers", None)
        failed = await wait_for_run(store, run_id)
        assert failed["status"] == "failed"
        assert await store.retry_run(run_id)
        run = await wait_for_run(store, run_id)
    assert run["status"] == "completed"
    assert run["output"] == 2
    assert step_of(run, "first")["attempt"] == 1  # kept, not run again
    assert step_of(run, "second")["attempt"] == 2
