"""What one socket can make the gateway hold, driven past each bound (docs/design/fanout.md,
"What one socket holds"): the outbox (answers and control frames included), the message being
assembled, subscriptions, and replays of large events. Each test checks that the memory stays
within the bound and that the gateway keeps serving other sockets."""

from __future__ import annotations

import asyncio
import gc
import uuid
from typing import Any

import orjson
from websockets.frames import Frame, Opcode

from gateway.config import DEFAULT_MAX_FRAME_BYTES, GatewayConfig
from gateway.native_outbox import WRITE_PIECE
from gateway.native_socket import NativeSocket
from pgflow.db.store import Store
from tests.integration.gateway_harness import (
    Driver,
    Follower,
    RawClient,
    RunningGateway,
    open_socket,
    rss_bytes,
    running_gateway,
    wait_until,
)

ONE = {"slug": "one", "steps": [{"slug": "only"}]}
HIGH_WATER = 64 * 1024  # asyncio's default write buffer high-water mark
# What a socket's transport may hold past its outbox: one piece over the high-water mark, and
# a pong or a close frame.
TRANSPORT_BOUND = HIGH_WATER + WRITE_PIECE + 4096
MiB = 1024 * 1024


async def still_serving(gw: RunningGateway) -> None:
    """A fresh socket gets its pong and /healthz is green."""
    async with await open_socket(gw.ws_url) as ws:
        await ws.send('{"type": "ping", "id": "alive"}')
        assert orjson.loads(await asyncio.wait_for(ws.recv(), 20)) == {"type": "pong",
                                                                        "id": "alive"}
    assert await gw.healthy()


def direct_connections(gw: RunningGateway) -> list[NativeSocket]:
    return [c for c in gw.runtime.sockets.open if isinstance(c, NativeSocket)]


async def test_a_ping_flood_from_a_peer_that_never_reads_stays_within_the_bound(
    db_url: str,
) -> None:
    async with running_gateway(db_url) as gw:
        flooder = await RawClient.open(gw.ws_url, receive_buffer=4096)
        ping = Frame(Opcode.PING, b"p" * 125).serialize(mask=True)
        sent = await flooder.push(ping * 100_000)  # 13 MB of pings, never reading a pong
        assert sent > 1 * MiB
        buffered = await gw.metric("pgflow_socket_buffered_bytes")
        assert buffered <= TRANSPORT_BOUND, buffered
        await still_serving(gw)
        flooder.reset()


async def test_answers_to_a_peer_that_never_reads_stay_within_its_outbox(db_url: str) -> None:
    config = GatewayConfig(socket_buffer_frames=256, socket_buffer_bytes=64 * 1024)
    async with running_gateway(db_url, config=config) as gw:
        flooder = await RawClient.open(gw.ws_url, receive_buffer=4096)
        flooder.protocol.send_text(b'{"type": "ping", "id": "' + b"i" * 100 + b'"}')
        one = b"".join(flooder.protocol.data_to_send())
        await flooder.push(one * 50_000)  # 6 MB of pings asking for 7 MB of pongs
        buffered = await gw.metric("pgflow_socket_buffered_bytes")
        assert buffered <= config.socket_buffer_bytes + TRANSPORT_BOUND, buffered
        await still_serving(gw)
        flooder.reset()


async def test_a_fragmented_message_over_the_limit_is_refused_as_a_whole(db_url: str) -> None:
    limit = DEFAULT_MAX_FRAME_BYTES
    async with running_gateway(db_url) as gw:
        before = rss_bytes()
        # Each fragment is under the limit; the message they make is not.
        over = [await RawClient.open(gw.ws_url) for _ in range(40)]
        for client in over:
            client.protocol.send_text(b"x" * (limit - 1000), fin=False)
            client.protocol.send_continuation(b"x" * 2000, fin=False)
            await client.flush()
        for client in over:
            messages, code = await client.read_to_close()
            assert code == 1009
            assert [m["code"] for m in messages] == ["too_large"]
        # Unfinished messages within the limit: each socket holds at most the limit.
        holding = [await RawClient.open(gw.ws_url) for _ in range(40)]
        for client in holding:
            client.protocol.send_text(b"x" * (limit // 2), fin=False)
            for _ in range(100):  # empty fragments cost nothing
                client.protocol.send_continuation(b"", fin=False)
            await client.flush()
        await wait_until(lambda: sum(c._fragments is not None
                                     for c in direct_connections(gw)) == 40)
        for connection in direct_connections(gw):
            fragments = connection._fragments
            assert fragments is not None
            assert len(fragments[1]) <= limit
        assert rss_bytes() - before < 40 * limit + 32 * MiB
        await still_serving(gw)
        for client in holding:
            client.reset()


async def test_subscriptions_past_the_bound_are_refused_and_hold_nothing(
    db_url: str, store: Store
) -> None:
    await store.define_flow(ONE)
    config = GatewayConfig(max_subscriptions=5)
    async with running_gateway(db_url, config=config) as gw:
        runs = [await gw.start_run("one") for _ in range(6)]
        unknown = [str(uuid.uuid4()) for _ in range(200)]
        follower = await Follower.open(gw.ws_url)
        for run_id in runs + unknown + runs:
            await follower.subscribe(run_id)
        await wait_until(lambda: len([m for m in follower.others if m["type"] == "error"])
                         >= 200 + 2)
        assert gw.runtime.fanout.subscription_count == 5
        codes = {m["code"] for m in follower.others if m["type"] == "error"}
        assert codes == {"too_many_subscriptions"}  # refused before any read
        await still_serving(gw)
        await follower.close()


async def test_a_large_event_replayed_to_sockets_that_never_read_is_shared_and_paced(
    db_url: str, store: Store
) -> None:
    await store.define_flow(ONE)
    async with running_gateway(db_url) as gw:
        run_id = await gw.start_run("one")
        # step:completed and run:completed each carry it: two 4 MB events.
        await Driver(store).finish([run_id], output={"blob": "x" * (4 * MiB)})
        gc.collect()
        before = rss_bytes()
        readers = 16  # a copy per socket would be 16 x 8 MiB: far above what one shared copy costs
        stalled = [await RawClient.open(gw.ws_url, receive_buffer=4096) for _ in range(readers)]
        for client in stalled:
            await client.send(orjson.dumps({"type": "subscribe", "run_id": run_id}).decode())
        # Each has its first large event in flight, its transport full.
        await wait_until(lambda: len(direct_connections(gw)) == readers and all(
            c.write_paused for c in direct_connections(gw)))
        buffered = await gw.metric("pgflow_socket_buffered_bytes")
        # Outboxes count the frames they share (until the last byte is handed over) against
        # each socket's bound; the transports hold pieces.
        bound = gw.runtime.config.socket_buffer_bytes + TRANSPORT_BOUND
        assert buffered <= readers * bound, buffered
        transports = sum(c.buffered_bytes() for c in direct_connections(gw))
        assert transports <= readers * TRANSPORT_BOUND, transports
        grown = rss_bytes() - before
        # One copy of each event's frame (text and bytes), not one per socket (~35 MiB alone;
        # the allocator's state after earlier tests in the same process adds some).
        assert grown < 100 * MiB, f"RSS grew by {grown / MiB:.0f} MiB"
        # The gateway keeps serving: a reading socket gets the whole run.
        follower = await Follower.open(gw.ws_url)
        await follower.subscribe(run_id)
        events = await follower.wait_done(run_id)
        assert events[-1]["output"] == {"blob": "x" * (4 * MiB)}
        await follower.close()
        del events
        follower.events.clear()
        follower.messages.clear()
        for client in stalled:
            client.reset()
        await wait_until(lambda: not gw.runtime.sockets.open)
        gc.collect()
        assert gw.runtime.relay is not None
        assert len(gw.runtime.relay.frames) == 0
        # The heap the frames used goes back to the system (native_outbox.py trims it).
        await wait_until(lambda: rss_bytes() - before < 16 * MiB, timeout=5)


async def test_a_replay_of_many_large_events_reads_about_one_outbox_at_a_time(
    db_url: str, store: Store
) -> None:
    # 12 steps of 300 kB each, and the run's output holding all of them: ~7 MB of log. Read as
    # one page it would all sit in the gateway for each subscriber at once.
    wide = {"slug": "wide", "steps": [{"slug": f"s{i}"} for i in range(12)]}
    await store.define_flow(wide)
    config = GatewayConfig(socket_buffer_bytes=1 * MiB)
    async with running_gateway(db_url, config=config) as gw:
        run_id = await gw.start_run("wide")
        await Driver(store).finish([run_id], output="x" * 300_000)
        reads: list[list[int]] = []
        gateway_store = gw.runtime.require_store()
        replay, page = gateway_store.get_run_replay, gateway_store.get_run_events_json

        async def recorded_replay(*args: Any, **kwargs: Any) -> Any:
            result = await replay(*args, **kwargs)
            reads.append([len(text) for _, text in result.events])
            return result

        async def recorded_page(*args: Any, **kwargs: Any) -> Any:
            rows, truncated = await page(*args, **kwargs)
            reads.append([len(text) for _, text in rows])
            return rows, truncated

        gateway_store.get_run_replay = recorded_replay  # type: ignore[method-assign]
        gateway_store.get_run_events_json = recorded_page  # type: ignore[method-assign]
        follower = await Follower.open(gw.ws_url)
        await follower.subscribe(run_id)
        events = await follower.wait_done(run_id)
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert events[-1]["event"] == "run:completed"
        assert events[-1]["output"] == {f"s{i}": "x" * 300_000 for i in range(12)}
        soft = gw.runtime.fanout.soft_bytes
        assert len(reads) > 2, reads
        for sizes in reads:
            # Every read stops once it holds the outbox's soft limit: all but its last event
            # fit under it (a single event larger than that still comes, alone).
            assert sum(sizes[:-1]) < soft, (sizes, soft)
        await follower.close()
