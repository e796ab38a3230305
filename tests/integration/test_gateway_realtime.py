"""/realtime on a real gateway: replay, the replay/live seam, many sockets, big events."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from pgflow.db.store import Completion, Store
from tests.integration.gateway_harness import (
    CHAIN,
    TIMEOUT,
    WIDE,
    Driver,
    Follower,
    log_of,
    running_gateway,
    strip,
    wait_until,
)


async def test_subscribing_after_the_run_finished_replays_its_whole_history(
    db_url: str, store: Store
) -> None:
    await store.define_flow(WIDE)
    async with running_gateway(db_url) as gw:
        run_id = await gw.start_run("wide", {"n": 1})
        await Driver(store).finish([run_id])
        follower = await Follower.open(gw.ws_url)
        await follower.subscribe(run_id)
        events = await follower.wait_done(run_id)
        log = await log_of(store, run_id)
        assert strip(events) == log
        assert [e["seq"] for e in events] == list(range(1, len(log) + 1))
        assert follower.others == [{"type": "subscribed", "run_id": run_id, "seq": len(log)}]
        # since: only what follows
        late = await Follower.open(gw.ws_url)
        await late.subscribe(run_id, since=5)
        assert strip(await late.wait_done(run_id)) == log[5:]
        await follower.close()
        await late.close()


async def test_subscribing_mid_run_loses_nothing_and_repeats_nothing(
    db_url: str, store: Store
) -> None:
    """Steps complete one transaction at a time while sockets subscribe: the seam race.

    Each subscribe is fired when the driver reaches a random step, so it races the next
    commits: their events arrive live while the replay query runs.
    """
    await store.define_flow(WIDE)
    rounds, followers_per_run, steps_per_run = 12, 4, 10
    total_steps = rounds * steps_per_run
    async with running_gateway(db_url) as gw:
        run_ids = [await gw.start_run("wide", {"round": i}) for i in range(rounds)]
        followers = [await Follower.open(gw.ws_url) for _ in range(rounds * followers_per_run)]
        reached = [asyncio.Event() for _ in range(total_steps + 1)]

        async def drive() -> None:
            driver = Driver(store)
            done = 0
            reached[0].set()
            while done < total_steps:
                done += await driver.step(max_tasks=1)
                reached[done].set()

        async def subscribe_at(follower: Follower, run_id: str, step: int) -> None:
            await reached[step].wait()
            await follower.subscribe(run_id, since=random.choice([0, 0, 1, 2]))

        rng = random.Random()
        subscribing = [
            subscribe_at(followers[i * followers_per_run + j], run_id,
                         rng.randrange(total_steps * 3 // 4))
            for i, run_id in enumerate(run_ids) for j in range(followers_per_run)
        ]
        async with asyncio.timeout(TIMEOUT):
            await asyncio.gather(drive(), *subscribing)
        mid_run = 0
        for i, run_id in enumerate(run_ids):
            log = await log_of(store, run_id)
            for follower in followers[i * followers_per_run:(i + 1) * followers_per_run]:
                events = await follower.wait_done(run_id)
                since = events[0]["seq"] - 1
                assert since in (0, 1, 2)
                assert strip(events) == log[since:], f"run {run_id}"
                subscribed = follower.others[0]
                assert subscribed["type"] == "subscribed"
                about_run = [m for m in follower.messages if m.get("run_id") == run_id]
                assert about_run[0] is subscribed  # before any of its events
                mid_run += since < subscribed["seq"] < len(log)
        assert mid_run >= len(followers) // 2, "the subscribes did not race the run"
        for follower in followers:
            await follower.close()


async def test_five_hundred_sockets_on_fifty_runs_each_get_exactly_their_runs(
    db_url: str, store: Store
) -> None:
    await store.define_flow(CHAIN)
    async with running_gateway(db_url) as gw:
        run_ids = [await gw.start_run("chain", {"i": i}) for i in range(50)]
        rng = random.Random(7)
        followers = await asyncio.gather(*(Follower.open(gw.ws_url) for _ in range(500)))
        following = {id(f): rng.sample(run_ids, 2) for f in followers}
        for follower in followers:
            for run_id in following[id(follower)]:
                await follower.subscribe(run_id)
        await Driver(store).finish(run_ids)
        logs = {run_id: await log_of(store, run_id) for run_id in run_ids}
        for follower in followers:
            for run_id in following[id(follower)]:
                assert strip(await follower.wait_done(run_id)) == logs[run_id]
            assert set(follower.events) == set(following[id(follower)])
        await asyncio.gather(*(f.close() for f in followers))


async def test_an_event_over_8000_bytes_arrives_whole(db_url: str, store: Store) -> None:
    await store.define_flow(CHAIN)
    big = {"blob": "x" * 100_000, "list": list(range(1000))}
    async with running_gateway(db_url) as gw:
        run_id = await gw.start_run("chain")
        follower = await Follower.open(gw.ws_url)
        await follower.subscribe(run_id)
        await Driver(store).finish([run_id], output=big)
        events = await follower.wait_done(run_id)
        assert strip(events) == await log_of(store, run_id)
        completed = [e for e in events if e["event"] == "step:completed"]
        assert len(completed) == 3
        assert all(e["output"] == big for e in completed)
        assert events[-1]["output"] == big
        await follower.close()


async def test_a_plain_client_following_the_design_gets_every_event(
    db_url: str, store: Store
) -> None:
    """Only httpx and websockets on the client side, as docs/reference/ describes the wire."""
    await store.define_flow(CHAIN)
    async with running_gateway(db_url) as gw:
        async with httpx.AsyncClient(trust_env=False) as http:
            started = await http.post(gw.url + "/rpc/run_flow",
                                      json={"flow_slug": "chain", "input": {"q": 1}})
        assert started.status_code == 201
        body = started.json()
        assert body["flow_slug"] == "chain"
        assert body["status"] == "started"
        run_id = body["run_id"]
        seen: list[dict[str, object]] = []
        driving = asyncio.create_task(Driver(store).finish([run_id]))
        async with connect(gw.ws_url, proxy=None) as ws:
            await ws.send(orjson.dumps({"type": "subscribe", "run_id": run_id,
                                        "since": 0}).decode())
            async with asyncio.timeout(TIMEOUT):
                async for raw in ws:
                    message = orjson.loads(raw)
                    if message["type"] == "event":
                        seen.append(message)
                        if message["event"] == "run:completed":
                            break
        await driving
        assert [m["seq"] for m in seen] == list(range(1, 9))
        assert seen[-1]["output"] == {"step": "c"}


async def test_ping_unsubscribe_and_resubscribe(db_url: str, store: Store) -> None:
    await store.define_flow(CHAIN)
    async with running_gateway(db_url) as gw:
        run_id = await gw.start_run("chain")
        async with connect(gw.ws_url, proxy=None) as ws:
            await ws.send('{"type": "ping", "id": 42}')
            assert orjson.loads(await ws.recv()) == {"type": "pong", "id": 42}
            await ws.send(orjson.dumps({"type": "subscribe", "run_id": run_id}).decode())
            assert orjson.loads(await ws.recv())["type"] == "subscribed"
            assert [orjson.loads(await ws.recv())["seq"] for _ in range(2)] == [1, 2]
            await ws.send(orjson.dumps({"type": "unsubscribe", "run_id": run_id}).decode())
            assert orjson.loads(await ws.recv()) == {"type": "unsubscribed", "run_id": run_id}
            # Nothing more about that run, even as it moves on.
            await Driver(store).step()
            await ws.send('{"type": "ping", "id": "after"}')
            assert orjson.loads(await ws.recv()) == {"type": "pong", "id": "after"}
            # Subscribing again replays from the new since.
            await ws.send(orjson.dumps({"type": "subscribe", "run_id": run_id,
                                        "since": 2}).decode())
            assert orjson.loads(await ws.recv()) == {"type": "subscribed", "run_id": run_id,
                                                     "seq": 4}
            assert [orjson.loads(await ws.recv())["seq"] for _ in range(2)] == [3, 4]


@pytest.mark.parametrize("since", [0, 3])
async def test_a_long_run_replays_in_pages(db_url: str, store: Store, since: int) -> None:
    """More events than one replay page (and than the outbox): paced, none lost."""
    steps = [{"slug": f"s{i}"} for i in range(300)]
    await store.define_flow({"slug": "many", "steps": steps, "output_step": "s0"})
    from gateway.config import GatewayConfig

    async with running_gateway(db_url, config=GatewayConfig(socket_buffer_frames=64)) as gw:
        run_id = await gw.start_run("many")
        await Driver(store).finish([run_id])
        follower = await Follower.open(gw.ws_url)
        await follower.subscribe(run_id, since=since)
        events = await follower.wait_done(run_id)
        assert strip(events) == (await log_of(store, run_id))[since:]
        assert await gw.metric("pgflow_slow_sockets_dropped_total") == 0
        await follower.close()


async def test_a_run_completed_while_unsubscribed_is_not_sent(db_url: str, store: Store) -> None:
    await store.define_flow(CHAIN)
    async with running_gateway(db_url) as gw:
        watched, other = await gw.start_run("chain"), await gw.start_run("chain")
        follower = await Follower.open(gw.ws_url)
        await follower.subscribe(watched)
        await Driver(store).finish([watched, other])
        await follower.wait_done(watched)
        assert set(follower.events) == {watched}
        await follower.close()


async def test_report_batches_touching_many_runs_are_fanned_out(
    db_url: str, store: Store
) -> None:
    """One transaction, many runs: one notification (or refs), every run's events."""
    await store.define_flow(CHAIN)
    async with running_gateway(db_url) as gw:
        run_ids = [await gw.start_run("chain") for _ in range(40)]
        follower = await Follower.open(gw.ws_url)
        for run_id in run_ids:
            await follower.subscribe(run_id)
        for _ in range(3):
            tasks = await store.claim_tasks("w", 100)
            await store.report("w", [Completion(t.run_id, t.step_slug, t.attempt, {"k": "v" * 300})
                                     for t in tasks])
        for run_id in run_ids:
            assert strip(await follower.wait_done(run_id)) == await log_of(store, run_id)
        assert uuid.UUID(run_ids[0])
        await follower.close()


async def test_a_hole_in_the_log_ends_the_subscription_with_a_gap_error(
    db_url: str, store: Store, conn: Any
) -> None:
    await store.define_flow(CHAIN)
    async with running_gateway(db_url) as gw:
        run_id = await gw.start_run("chain")
        await Driver(store).finish([run_id])
        await conn.execute("delete from pgflow.run_events where run_id = $1 and seq = 3",
                           uuid.UUID(run_id))
        reads = await gw.metric("pgflow_log_reads_total")
        follower = await Follower.open(gw.ws_url)
        await follower.subscribe(run_id)
        error = await next_error(follower)
        assert (error["code"], error["run_id"]) == ("gap", run_id)
        assert [e["seq"] for e in follower.events[run_id]] == [1, 2]
        # Backed off, then gave up: a handful of reads, not thousands a second.
        assert await gw.metric("pgflow_log_reads_total") - reads <= 6
        assert await gw.metric("pgflow_log_gaps_total") == 1
        assert gw.runtime.fanout.subscription_count == 0
        # Past the hole, the rest of the run is there.
        await follower.subscribe(run_id, since=3)
        events = await follower.wait_done(run_id)
        assert [e["seq"] for e in events][2:] == list(range(4, len(await log_of(store, run_id))
                                                             + 2))
        await follower.close()


async def test_a_live_subscription_whose_events_or_run_vanish_ends_with_an_error(
    db_url: str, store: Store, conn: Any
) -> None:
    await store.define_flow(CHAIN)
    async with running_gateway(db_url) as gw:
        gapped, deleted = await gw.start_run("chain"), await gw.start_run("chain")
        follower = await Follower.open(gw.ws_url)
        for run_id in (gapped, deleted):
            await follower.subscribe(run_id)
        await wait_until(lambda: len([m for m in follower.others
                                      if m["type"] == "subscribed"]) == 2)
        await wait_until(lambda: all(len(follower.events.get(r, [])) == 2
                                     for r in (gapped, deleted)))
        await conn.execute("delete from pgflow.runs where run_id = $1", uuid.UUID(deleted))
        reads = await gw.metric("pgflow_log_reads_total")
        # Events 3..5 announced by reference, then deleted (retention) before they are read.
        for run_id in (gapped, deleted):
            await conn.execute("select pg_notify('pgflow_events', $1)", orjson.dumps(
                {"v": 1, "refs": [{"run_id": run_id, "from": 3, "to": 5}]}).decode())
        errors = {}
        while len(errors) < 2:
            error = await next_error(follower, skip=len(errors))
            errors[error["run_id"]] = error["code"]
        assert errors == {gapped: "gap", deleted: "not_found"}
        assert await gw.metric("pgflow_log_reads_total") - reads <= 10
        assert gw.runtime.fanout.subscription_count == 0
        await follower.close()


async def next_error(follower: Follower, skip: int = 0) -> dict[str, Any]:
    """The error frame after the first ``skip`` ones."""
    def errors() -> list[dict[str, Any]]:
        return [m for m in follower.others if m["type"] == "error"]
    await wait_until(lambda: len(errors()) > skip)
    return errors()[skip]
