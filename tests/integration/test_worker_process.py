"""``pgflow worker`` processes against a real database: start-up, crashes, signals, restarts."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid

from examples import flows as examples
from pgflow.db.store import Store
from pgflow.flows import load_flows
from pgflow.worker import sync_flows
from tests.conftest import Server
from tests.integration.worker_flows import STREAMED_BEFORE_HANG
from tests.integration.worker_helpers import (
    REPO_ROOT,
    WorkerProcess,
    running_worker,
    server_down,
    sigkill,
    step_of,
    wait_for_run,
    wait_until,
)

FAST = ("--poll-interval", "0.2")


async def _leased_by(store: Store, run_id: uuid.UUID) -> str | None:
    async with store.pool.acquire() as connection:
        holder: str | None = await connection.fetchval(
            "select leased_by from pgflow.step_states where run_id = $1 "
            "and lease_expires_at is not null", run_id,
        )
    return holder


async def _count_leased(store: Store) -> int:
    async with store.pool.acquire() as connection:
        count: int = await connection.fetchval(
            "select count(*) from pgflow.step_states where lease_expires_at is not null"
        )
    return count


async def test_a_worker_process_runs_the_diamond_example_to_its_output(
    db_url: str, store: Store
) -> None:
    async with running_worker(db_url, *FAST, flows="examples.flows"):
        run_id = await store.run_flow("diamond", {"text": "The cat saw the dog.  The dog ran."})
        run = await wait_for_run(store, run_id)
    assert run["status"] == "completed", run
    assert run["output"] == {
        "summary": "The cat saw the dog. The dog ran.",
        "words": 8,
        "top_words": ["the", "dog", "cat"],
    }
    # summarize and count_words ran side by side: each started before the other completed
    events = await store.get_run_events(run_id)
    seq = {(e["event"], e["step_slug"]): e["seq"] for e in events}
    assert seq[("step:started", "summarize")] == seq[("step:started", "count_words")] - 1
    assert seq[("step:started", "count_words")] < seq[("step:completed", "summarize")]


async def test_a_worker_process_starts_on_unchanged_shapes_and_runs_the_fanout_example(
    db_url: str, store: Store
) -> None:
    await sync_flows(store, load_flows(["examples.flows"]))
    async with running_worker(db_url, *FAST, flows="examples.flows"):
        run = await wait_for_run(store, await store.run_flow("fanout", {"start": 1}))
    assert run["status"] == "completed", run
    assert run["output"]["sum"] == sum(n * n for n in range(1, examples.FANOUT_WIDTH + 1))
    assert len(run["steps"]) == examples.FANOUT_WIDTH + 2


async def test_a_worker_with_a_changed_flow_runs_its_new_version_and_leaves_old_runs_alone(
    db_url: str, store: Store
) -> None:
    # version 1 of diamond, with a run in flight that no process has the code for
    await store.define_flow({"slug": "diamond", "steps": [{"slug": "fetch"}]})
    old_run = await store.run_flow("diamond", {"url": "old"})
    async with running_worker(db_url, *FAST, flows="examples.flows") as worker:
        assert "flow diamond: its shape changed: it is now version 2" in worker.stderr
        new_run = await store.run_flow("diamond", {"text": "a new version runs"})
        run = await wait_for_run(store, new_run, timeout=10)
        old = await store.get_run(old_run)
    assert (run["status"], run["version"]) == ("completed", 2)
    assert old is not None
    assert (old["status"], old["version"], old["steps"][0]["attempt"]) == ("started", 1, 0)


async def test_a_step_killed_with_its_worker_runs_again_after_its_lease(
    db_url: str, store: Store
) -> None:
    lease = ("--lease", "1")
    async with running_worker(db_url, *FAST, *lease) as doomed_worker:
        run_id = await store.run_flow("hangs_once", {})
        await wait_until(lambda: _leased_by(store, run_id), timeout=10,
                         what="the first worker to claim the step")
        sigkill(doomed_worker)
        await doomed_worker.wait()
    async with running_worker(db_url, *FAST, *lease):
        run = await wait_for_run(store, run_id, timeout=10)
    assert run["status"] == "completed", run
    assert step_of(run, "hang_first")["attempt"] == 2
    assert run["output"] == {"attempt": 2}
    retrying = [e for e in await store.get_run_events(run_id) if e["event"] == "step:retrying"]
    assert [(e["error"], e["attempt"]) for e in retrying] == [("lease expired", 1)]


async def test_a_worker_killed_mid_stream_the_retry_streams_anew_after_the_lost_attempt(
    db_url: str, store: Store
) -> None:
    """The first attempt streams, then its worker is SIGKILLed. Its chunks stay in the log, all
    before the attempt's end (step:retrying, lease expired); the retry streams under attempt 2,
    all before step:completed. A client showing the current attempt's chunks shows the
    retry's."""
    lease = ("--lease", "1")
    async with running_worker(db_url, *FAST, *lease) as doomed_worker:
        run_id = await store.run_flow("streams_then_hangs", {})

        async def streamed() -> bool:
            log = await store.get_run_events(run_id)
            return sum(len(e.get("chunks", [])) for e in log) >= STREAMED_BEFORE_HANG

        await wait_until(streamed, timeout=10, what="the first attempt's chunks in the log")
        sigkill(doomed_worker)
        await doomed_worker.wait()
    async with running_worker(db_url, *FAST, *lease):
        run = await wait_for_run(store, run_id, timeout=10)
    assert run["output"] == {"attempt": 2}
    log = await store.get_run_events(run_id)
    kinds = [(e["event"], e.get("attempt")) for e in log if e["event"] != "step:stream"]
    assert kinds == [("run:started", None), ("step:started", 1), ("step:retrying", 1),
                     ("step:started", 2), ("step:completed", 2), ("run:completed", None)]
    for attempt in (1, 2):
        ended = next(i for i, e in enumerate(log) if e["event"] in (
            "step:retrying", "step:completed") and e["attempt"] == attempt)
        chunks = [(i, c) for i, e in enumerate(log) if e["event"] == "step:stream"
                  and e["attempt"] == attempt for c in e["chunks"]]
        assert [c for _, c in chunks] == [f"attempt {attempt} chunk {i}"
                                          for i in range(STREAMED_BEFORE_HANG)]
        assert all(i < ended for i, _ in chunks), "a chunk came after its attempt ended"


async def test_sigterm_finishes_running_handlers_releases_the_rest_and_exits_0(
    db_url: str, store: Store
) -> None:
    async with running_worker(db_url, *FAST, "--shutdown-grace", "1.5") as worker:
        finishing = [await store.run_flow("drains", {"hang": False}) for _ in range(3)]
        hanging = await store.run_flow("drains", {"hang": True})
        await wait_until(lambda: _all_leased(store, 4), timeout=10,
                         what="all four tasks to be running")
        worker.send(signal.SIGTERM)
        code = await worker.wait(timeout=15)
    assert code == 0, worker.stderr
    for run_id in finishing:
        run = await store.get_run(run_id)
        assert run is not None
        assert run["status"] == "completed", run
    # the handler that outlived the grace was cancelled and its task given back, unattempted
    assert await _count_leased(store) == 0
    hung = await store.get_run(hanging)
    assert hung is not None
    assert (hung["status"], step_of(hung, "work")["attempt"]) == ("started", 0)
    assert "for 4 running handler(s)" in worker.stderr  # all four were running at SIGTERM
    assert "released 1 task(s)" in worker.stderr


async def test_a_second_sigterm_aborts_at_once_and_still_releases_the_tasks(
    db_url: str, store: Store
) -> None:
    async with running_worker(db_url, *FAST, "--shutdown-grace", "60") as worker:
        run_id = await store.run_flow("drains", {"hang": True})
        await wait_until(lambda: _leased_by(store, run_id), timeout=10,
                         what="the task to be running")
        worker.send(signal.SIGTERM)
        await worker.wait_for_line("waiting up to 60.0 s for 1 running handler(s)")
        worker.send(signal.SIGTERM)
        code = await worker.wait(timeout=10)  # far less than the 60 s grace
    assert code == 1, worker.stderr
    assert await _count_leased(store) == 0
    assert "released 1 task(s)" in worker.stderr


async def test_a_worker_process_exits_even_when_a_sync_handler_never_returns(
    db_url: str, store: Store
) -> None:
    async with running_worker(db_url, *FAST, "--shutdown-grace", "0.2") as worker:
        run_id = await store.run_flow("stuck_thread", {})
        await wait_until(lambda: _leased_by(store, run_id), timeout=10,
                         what="the task to be running")
        worker.send(signal.SIGTERM)
        code = await worker.wait(timeout=10)
    assert code == 0, worker.stderr
    assert "exiting with 1 handler thread(s) still running" in worker.stderr
    assert await _count_leased(store) == 0


async def _all_leased(store: Store, count: int) -> bool:
    return await _count_leased(store) == count


async def test_runs_started_before_and_after_a_database_restart_complete(
    private_server: Server,
) -> None:
    assert private_server.cluster is not None
    store = await Store.open(private_server.url, max_size=2)
    try:
        async with running_worker(private_server.url, *FAST) as worker:
            before = [await store.run_flow("survives", {"n": n}) for n in range(3)]
            await wait_until(lambda: _all_leased(store, 3), timeout=10,
                             what="the first steps to be running")
            await asyncio.to_thread(private_server.cluster.restart)
            await store.close()
            store = await Store.open(private_server.url, max_size=2)
            after = [await store.run_flow("survives", {"n": n}) for n in range(3, 6)]
            runs = [await wait_for_run(store, r, timeout=20) for r in before + after]
            assert worker.process.returncode is None  # still running
    finally:
        await store.close()
    assert [r["status"] for r in runs] == ["completed"] * 6, runs
    assert [r["output"] for r in runs] == [{"n": n + 1} for n in range(6)]


async def test_results_finished_while_the_database_is_down_are_reported_once_it_is_back(
    private_server: Server,
) -> None:
    assert private_server.cluster is not None
    store = await Store.open(private_server.url, max_size=2)
    try:
        async with running_worker(private_server.url, *FAST) as worker:
            run_ids = [await store.run_flow("survives", {"n": n}) for n in range(3)]
            await wait_until(lambda: _all_leased(store, 3), timeout=10,
                             what="the first steps to be running")
            await store.close()
            async with server_down(private_server.cluster):
                # the handlers finish meanwhile; their report fails and is kept
                await worker.wait_for_line("reporting results failed")
            store = await Store.open(private_server.url, max_size=2)
            runs = [await wait_for_run(store, r, timeout=20) for r in run_ids]
    finally:
        await store.close()
    assert [r["output"] for r in runs] == [{"n": n + 1} for n in range(3)]
    # reported late but within the lease: the first attempt counted, none ran twice
    assert [step_of(r, "slow")["attempt"] for r in runs] == [1, 1, 1]


async def test_a_worker_with_too_many_stuck_threads_drains_and_exits_3(
    db_url: str, store: Store
) -> None:
    async with running_worker(db_url, *FAST, "--max-stuck-threads", "2",
                              "--concurrency", "4") as worker:
        runs = [await store.run_flow("stuck_past_timeout", {}) for _ in range(2)]
        code = await worker.wait(timeout=15)
    assert code == 3, worker.stderr
    assert "2 plain handler(s) stuck in their threads past their timeout (limit 2)" in (
        worker.stderr)
    assert "exiting with 2 handler thread(s) still running" in worker.stderr
    for run_id in runs:  # each stuck attempt failed as timed out, and was reported
        run = await store.get_run(run_id)
        assert run is not None
        assert step_of(run, "hangs_past_its_timeout")["error"] == (
            "step 'hangs_past_its_timeout' timed out after 1 s")
    assert await _count_leased(store) == 0


async def test_pgflow_serve_with_worker_exits_on_sigterm_while_a_sync_handler_is_stuck(
    db_url: str, store: Store
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pgflow", "serve", "--database-url", db_url,
        "--host", "127.0.0.1", "--port", "0", "--with-worker",
        "--flows", "tests.integration.worker_flows", *FAST, "--shutdown-grace", "0.5",
        cwd=REPO_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    worker = WorkerProcess(process)
    try:
        assert process.stdout is not None
        async with asyncio.timeout(15):
            line = (await process.stdout.readline()).decode()
        assert line.startswith("pgflow gateway listening on"), line + worker.stderr
        run_id = await store.run_flow("stuck_thread", {})
        await wait_until(lambda: _leased_by(store, run_id), timeout=10,
                         what="the stuck handler to be running")
        worker.send(signal.SIGTERM)
        # the grace is 0.5 s: before the fix the process lived on until a second signal
        code = await worker.wait(timeout=10)
    finally:
        await worker.close()
    assert code == 0, worker.stderr
    assert "exiting with 1 handler thread(s) still running" in worker.stderr
    assert await _count_leased(store) == 0
