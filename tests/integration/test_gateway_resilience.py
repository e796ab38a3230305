"""Nothing lost when the LISTEN link drops or PostgreSQL restarts; slow sockets cannot hold the
others back; shutdown closes sockets with 1001."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from gateway.config import GatewayConfig
from gateway.relay import APPLICATION_NAME
from pgflow.db.store import Store
from pgflow.errors import DatabaseUnavailableError
from tests.conftest import Server
from tests.integration.gateway_harness import (
    TIMEOUT,
    WIDE,
    Driver,
    Follower,
    RawClient,
    log_of,
    running_gateway,
    strip,
    wait_until,
)

# 200 leaves of 32 KB each: more than the kernel's socket buffers (4 MB here) can absorb.
FAT = {"slug": "fat", "output_step": "root", "steps": [
    {"slug": "root"}, *({"slug": f"p{i}", "depends_on": ["root"]} for i in range(200)),
]}


async def terminate_listener(conn: Any) -> bool:
    terminated: bool = await conn.fetchval(
        "select coalesce(bool_and(pg_terminate_backend(pid)), false) from pg_stat_activity "
        "where application_name = $1 and datname = current_database()", APPLICATION_NAME,
    )
    return terminated


async def drive_with_retries(driver: Driver, max_tasks: int, steps: int | None = None) -> int:
    """Steps until nothing is ready (or ``steps`` transactions), riding out a restarting server."""
    done = 0
    async with asyncio.timeout(TIMEOUT * 2):
        while steps is None or done < steps:
            try:
                if not await driver.step(max_tasks=max_tasks):
                    return done
            except DatabaseUnavailableError:
                await asyncio.sleep(0.05)
                continue
            done += 1
            await asyncio.sleep(0.002)
    return done


async def test_a_killed_listen_connection_loses_no_event(
    db_url: str, store: Store, conn: Any
) -> None:
    await store.define_flow(WIDE)
    async with running_gateway(db_url) as gw:
        run_ids = [await gw.start_run("wide", {"i": i}) for i in range(10)]
        followers = [await Follower.open(gw.ws_url) for _ in range(5)]
        for follower in followers:
            for run_id in run_ids:
                await follower.subscribe(run_id)
        driver = Driver(store)
        await drive_with_retries(driver, max_tasks=3, steps=5)
        for kill in range(2):
            assert await terminate_listener(conn)
            # Steps complete while the listener is away: their notifications are lost.
            await drive_with_retries(driver, max_tasks=3, steps=4)
            await wait_until(lambda k=kill: gw.metric("pgflow_listener_reconnects_total"),
                             timeout=TIMEOUT)
            await wait_until(gw.healthy)
        await drive_with_retries(driver, max_tasks=3)
        await driver.finish(run_ids)
        for run_id in run_ids:
            log = await log_of(store, run_id)
            for follower in followers:
                assert strip(await follower.wait_done(run_id)) == log
        assert await gw.metric("pgflow_listener_reconnects_total") >= 2
        for follower in followers:
            await follower.close()


async def test_a_postgres_restart_loses_no_event(private_server: Server) -> None:
    store = await Store.open(private_server.url, max_size=5)
    try:
        await store.define_flow(WIDE)
        async with running_gateway(private_server.url) as gw:
            run_ids = [await gw.start_run("wide", {"i": i}) for i in range(6)]
            followers = [await Follower.open(gw.ws_url) for _ in range(3)]
            for follower in followers:
                for run_id in run_ids:
                    await follower.subscribe(run_id)
            driver = Driver(store)
            await drive_with_retries(driver, max_tasks=2, steps=4)
            assert private_server.cluster is not None
            await asyncio.to_thread(private_server.cluster.restart)
            await drive_with_retries(driver, max_tasks=2)
            await wait_until(gw.healthy)
            for run_id in run_ids:
                log = await log_of(store, run_id)
                assert log[-1]["event"] == "run:completed"
                for follower in followers:
                    assert strip(await follower.wait_done(run_id)) == log
            assert await gw.metric("pgflow_listener_reconnects_total") >= 1
            for follower in followers:
                await follower.close()
    finally:
        await store.close()


async def test_a_socket_that_stops_reading_is_closed_with_1013_and_the_others_keep_up(
    db_url: str, store: Store
) -> None:
    await store.define_flow(FAT)
    config = GatewayConfig(socket_buffer_frames=64, socket_stall_timeout=1.0, close_timeout=10.0)
    async with running_gateway(db_url, config=config) as gw:
        run_id = await gw.start_run("fat")
        fast = [await Follower.open(gw.ws_url) for _ in range(3)]
        # The stalled client: a small receive buffer and no reads at all until the test
        # reads again (a websockets connection would keep reading into its own buffer).
        slow = await RawClient.open(gw.ws_url, receive_buffer=4096)
        await slow.send(orjson.dumps({"type": "subscribe", "run_id": run_id}).decode())
        for follower in fast:
            await follower.subscribe(run_id)
        await Driver(store).finish([run_id], output={"blob": "y" * 32_000})
        log = await log_of(store, run_id)
        for follower in fast:
            assert strip(await follower.wait_done(run_id)) == log
        await wait_until(lambda: gw.metric("pgflow_slow_sockets_dropped_total"))
        assert await gw.metric("pgflow_slow_sockets_dropped_total") == 1
        # Reading again, the stalled client finds a prefix of the log, then the close.
        messages, close_code = await slow.read_to_close()
        received = [m for m in messages if m["type"] == "event"]
        assert close_code == 1013
        assert len(received) < len(log)
        assert strip(received) == log[: len(received)]
        # It resumes with since, like any client would.
        resumed = await Follower.open(gw.ws_url)
        since = received[-1]["seq"] if received else 0
        await resumed.subscribe(run_id, since=since)
        assert strip(await resumed.wait_done(run_id)) == log[since:]
        assert await gw.healthy()
        for follower in [*fast, resumed]:
            await follower.close()


async def test_shutdown_closes_sockets_with_1001(db_url: str, store: Store) -> None:
    await store.define_flow(WIDE)
    async with running_gateway(db_url) as gw:
        run_id = await gw.start_run("wide")
        followers = [await Follower.open(gw.ws_url) for _ in range(3)]
        for follower in followers:
            await follower.subscribe(run_id)
        await wait_until(lambda: all(f.events.get(run_id) for f in followers))
        await gw.server.stop()
        for follower in followers:
            assert follower.task is not None
            async with asyncio.timeout(TIMEOUT):
                await follower.task
            assert follower.close_code == 1001
