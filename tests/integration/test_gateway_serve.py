"""`pgflow serve` as a process, the gateway with its worker, and the gateway mounted in a parent
app."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from gateway.app import create_app, lifespan
from gateway.server import GatewayServer
from pgflow.db.store import Store
from pgflow.flows import load_flows
from tests.integration.gateway_harness import (
    CHAIN,
    TIMEOUT,
    Driver,
    Follower,
    log_of,
    running_gateway,
    strip,
)

REPO = Path(__file__).resolve().parents[2]


async def test_pgflow_serve_with_worker_runs_flows_and_stops_cleanly_on_sigterm(
    db_url: str,
) -> None:
    env = {**os.environ, "PGFLOW_EXAMPLE_DELAY_SCALE": "0.02", "PYTHONUNBUFFERED": "1"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pgflow", "--log-level", "warning", "serve",
        "--database-url", db_url, "--host", "127.0.0.1", "--port", "0",
        "--flows", "examples.flows", "--with-worker",
        cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(TIMEOUT):
            line = (await process.stdout.readline()).decode()
        assert line.startswith("pgflow gateway listening on http://127.0.0.1:"), line
        url = line.rsplit(" ", 1)[1].strip()
        async with httpx.AsyncClient(base_url=url, trust_env=False) as http:
            assert (await http.get("/healthz")).status_code == 200
            flows = {f["slug"] for f in (await http.get("/flows")).json()["flows"]}
            assert {"diamond", "fanout", "flaky", "doomed"} <= flows
            run_id = (await http.post("/rpc/run_flow", json={
                "flow_slug": "fanout", "input": {"start": 1}})).json()["run_id"]
            follower = await Follower.open(url.replace("http", "ws") + "/realtime")
            await follower.subscribe(run_id)
            events = await follower.wait_done(run_id)
            assert events[-1]["event"] == "run:completed"
            assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
            process.send_signal(signal.SIGTERM)
            assert follower.task is not None
            async with asyncio.timeout(TIMEOUT):
                await follower.task
            assert follower.close_code == 1001
        async with asyncio.timeout(TIMEOUT * 2):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_create_app_with_worker_runs_the_loaded_flows(
    db_url: str, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGFLOW_EXAMPLE_DELAY_SCALE", "0.02")
    flows = load_flows(["examples.flows"])
    async with running_gateway(db_url, flows=flows, with_worker=True) as gw:
        follower = await Follower.open(gw.ws_url)
        run_ids = {slug: await gw.start_run(slug, next(
            f.example_input for f in flows if f.slug == slug)) for slug in ("diamond", "doomed")}
        for run_id in run_ids.values():
            await follower.subscribe(run_id)
        for slug, run_id in run_ids.items():
            events = await follower.wait_done(run_id)
            assert strip(events) == await log_of(store, run_id)
            assert events[-1]["event"] == ("run:completed" if slug == "diamond" else "run:failed")
        await follower.close()


@contextlib.asynccontextmanager
async def parent_lifespan(parent: Starlette) -> AsyncIterator[None]:
    async with lifespan(parent.state.pgflow):
        yield


async def test_the_gateway_mounts_inside_a_parent_app(db_url: str, store: Store) -> None:
    await store.define_flow(CHAIN)
    pgflow = create_app(db_url)
    parent = Starlette(routes=[Mount("/pgflow", app=pgflow)], lifespan=parent_lifespan)
    parent.state.pgflow = pgflow
    server = GatewayServer(parent)
    url = await server.start()
    try:
        async with httpx.AsyncClient(base_url=url, trust_env=False) as http:
            assert (await http.get("/pgflow/healthz")).status_code == 200
            started = await http.post("/pgflow/rpc/run_flow", json={"flow_slug": "chain"})
            assert started.headers["location"].startswith("/pgflow/runs/")
            run_id = started.json()["run_id"]
        follower = await Follower.open(url.replace("http", "ws") + "/pgflow/realtime")
        await follower.subscribe(run_id)
        await Driver(store).finish([run_id])
        assert strip(await follower.wait_done(run_id)) == await log_of(store, run_id)
        await follower.close()
    finally:
        await server.stop()


async def test_a_side_task_that_dies_stops_the_gateway(db_url: str, store: Store) -> None:
    await store.define_flow(CHAIN)
    app = create_app(db_url)
    server = GatewayServer(app)
    url = await server.start()
    runtime = server.runtime
    assert runtime is not None
    assert runtime.relay is not None

    def broken(payload: object) -> None:
        raise RuntimeError("relay bug")

    runtime.relay.handle = broken  # type: ignore[method-assign]
    async with httpx.AsyncClient(base_url=url, trust_env=False) as http:
        # Two notifications: the consumer already holds the old method for the first.
        for _ in range(2):
            await http.post("/rpc/run_flow", json={"flow_slug": "chain"})
    async with asyncio.timeout(TIMEOUT):
        await server.wait()
    assert isinstance(runtime.failed, RuntimeError)
    assert str(runtime.failed) == "relay bug"
