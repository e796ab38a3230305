"""Retention on the real components: what a socket, a snapshot, ``pgflow prune``, a worker with
``--retention`` and ``pgflow serve --with-worker --retention`` do once finished runs are pruned.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from pgflow.db.local_server import free_port
from pgflow.db.store import Store
from pgflow.flows import Flow
from pgflow.worker import Worker
from tests.conftest import Server
from tests.integration.gateway_harness import (
    CHAIN,
    TIMEOUT,
    Driver,
    Follower,
    running_gateway,
    wait_until,
)
from tests.migration._helpers import fresh_database

REPO = Path(__file__).resolve().parents[2]


def errors_of(follower: Follower) -> list[dict[str, Any]]:
    return [m for m in follower.others if m["type"] == "error"]


async def finished_chain(gw: Any, store: Store) -> str:
    run_id: str = await gw.start_run("chain")
    await Driver(store).finish([run_id])
    return run_id


async def test_a_socket_following_a_finished_run_gets_not_found_when_it_is_pruned(
    db_url: str, store: Store
) -> None:
    await store.define_flow(CHAIN)
    async with running_gateway(db_url) as gw:
        run_id = await finished_chain(gw, store)
        follower = await Follower.open(gw.ws_url)
        await follower.subscribe(run_id)
        events = list(await follower.wait_done(run_id))
        assert await store.prune_runs(timedelta(0)) == 1
        await wait_until(lambda: errors_of(follower))
        [error] = errors_of(follower)
        assert (error["code"], error["run_id"]) == ("not_found", run_id)
        assert follower.events[run_id] == events  # nothing else came
        assert gw.runtime.fanout.subscription_count == 0
        await follower.close()


async def test_a_pruned_run_is_not_found_by_subscribe_nor_by_get(
    db_url: str, store: Store
) -> None:
    await store.define_flow(CHAIN)
    async with running_gateway(db_url) as gw:
        pruned = await finished_chain(gw, store)
        going = await gw.start_run("chain")
        assert await store.prune_runs(timedelta(0)) == 1
        response = await gw.http.get(f"/runs/{pruned}")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
        assert await store.get_run(uuid.UUID(pruned)) is None
        # the run still going is untouched
        still = await gw.http.get(f"/runs/{going}")
        assert (still.status_code, still.json()["status"]) == (200, "started")
        follower = await Follower.open(gw.ws_url)
        await follower.subscribe(pruned)
        await wait_until(lambda: errors_of(follower))
        [error] = errors_of(follower)
        assert (error["code"], error["run_id"]) == ("not_found", pruned)
        assert pruned not in follower.events
        await follower.close()


# -- pgflow prune ----------------------------------------------------------------------------


async def pgflow(*argv: str) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``python -m pgflow *argv``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "PYTHONASYNCIODEBUG") and not k.startswith("PGFLOW_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pgflow", *argv, cwd=REPO, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(TIMEOUT):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_pgflow_prune_deletes_finished_runs_and_skips_locked_and_running_ones(
    db_url: str, store: Store, conn: Any
) -> None:
    await store.define_flow(CHAIN)
    driver = Driver(store)
    done = [await store.run_flow("chain", None) for _ in range(3)]
    await driver.finish([str(r) for r in done])
    going = await store.run_flow("chain", None)
    async with conn.transaction():
        # A concurrent transaction holds a finished run's row: the prune must not wait for it.
        await conn.execute("select 1 from pgflow.runs where run_id = $1 for update", done[0])
        code, out, err = await pgflow("prune", "--older-than", "0s", "--batch-size", "1",
                                      "--database-url", db_url)
    assert (code, out) == (0, "pruned 2 run(s) finished more than 0s ago\n"), err
    assert {r["run_id"] for r in await store.list_runs()} == {str(done[0]), str(going)}
    code, out, err = await pgflow("prune", "--older-than", "1d", "--database-url", db_url)
    assert (code, out) == (0, "pruned 0 run(s) finished more than 1d ago\n"), err


@pytest.mark.parametrize("older_than", ["7", "7x", "-1d", "1.5h", "", "99999999d"])
async def test_pgflow_prune_refuses_a_bad_duration(older_than: str) -> None:
    code, out, err = await pgflow("prune", "--older-than", older_than,
                                  "--database-url", "postgresql://127.0.0.1:1/none")
    assert (code, out) == (2, "")
    assert "argument --older-than:" in err, err
    assert "Traceback" not in err


async def test_pgflow_prune_says_to_migrate_an_unmigrated_database(pg_server: Server) -> None:
    url = await fresh_database(pg_server, "retention_unmigrated")
    code, out, err = await pgflow("prune", "--older-than", "7d", "--database-url", url)
    assert (code, out) == (2, "")
    assert err.strip().endswith("run `pgflow migrate` first"), err


async def test_pgflow_prune_exits_1_when_the_database_is_unreachable() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    code, out, err = await pgflow("prune", "--older-than", "7d", "--database-url", url)
    assert (code, out) == (1, ""), err
    assert err.startswith("pgflow prune: "), err


# -- the worker's --retention ----------------------------------------------------------------

retained = Flow("retained", max_attempts=1, timeout=60)


@retained.step()
async def maybe_hang(input: Any) -> dict[str, Any]:
    if input["run"]["hang"]:
        await asyncio.Event().wait()
    return {"done": True}


async def test_a_worker_with_retention_prunes_the_runs_it_finished_and_no_running_one(
    db_url: str, store: Store
) -> None:
    worker = Worker(db_url, [retained], retention=timedelta(0), retention_interval=0.05,
                    shutdown_grace=0)
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(TIMEOUT):
            await worker.started.wait()
        hanging = await store.run_flow("retained", {"hang": True})
        quick = [await store.run_flow("retained", {"hang": False}) for _ in range(5)]

        async def pruned() -> bool:
            return all([await store.get_run(r) is None for r in quick])

        await wait_until(pruned)
        run = await store.get_run(hanging)
        assert run is not None
        assert run["status"] == "started"
    finally:
        worker.stop()
        async with asyncio.timeout(TIMEOUT):
            await task


def test_worker_retention_is_checked() -> None:
    from pgflow.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="retention must be a timedelta from 0"):
        Worker("postgresql://x", [retained], retention=timedelta(seconds=-1))
    with pytest.raises(ConfigurationError, match="retention interval must be positive"):
        Worker("postgresql://x", [retained], retention=timedelta(0), retention_interval=0)


async def test_pgflow_serve_with_worker_passes_retention_on(db_url: str) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONASYNCIODEBUG", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pgflow", "--log-level", "warning", "serve",
        "--database-url", db_url, "--host", "127.0.0.1", "--port", "0",
        "--flows", "tests.integration.test_retention:retained", "--with-worker",
        "--retention", "0s", "--retention-interval", "0.05", "--shutdown-grace", "0",
        cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(TIMEOUT):
            line = (await process.stdout.readline()).decode()
        assert line.startswith("pgflow gateway listening on http://127.0.0.1:"), line
        url = line.rsplit(" ", 1)[1].strip()
        async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=TIMEOUT) as http:
            async def start(hang: bool) -> str:
                response = await http.post("/rpc/run_flow", json={
                    "flow_slug": "retained", "input": {"hang": hang}})
                assert response.status_code == 201, response.text
                run_id: str = response.json()["run_id"]
                return run_id

            hanging, quick = await start(True), await start(False)

            async def gone() -> bool:
                return (await http.get(f"/runs/{quick}")).status_code == 404

            await wait_until(gone)
            running = await http.get(f"/runs/{hanging}")
            assert (running.status_code, running.json()["status"]) == (200, "started")
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(TIMEOUT):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
