"""The gateway's own websocket protocol (gateway/native_socket.py) on the wire: compression,
fragments, message order behind a replay, keepalive, and handshakes it must refuse."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode

from gateway.config import GatewayConfig
from gateway.fanout import Client
from gateway.native_socket import NativeSocket
from gateway.session import Session
from pgflow.db.store import Store
from tests.integration.gateway_harness import (
    CHAIN,
    TIMEOUT,
    Driver,
    Follower,
    RawClient,
    RunningGateway,
    log_of,
    open_socket,
    running_gateway,
    strip,
    wait_until,
)

BLOB = {"text": "the same sentence, over and over. " * 60}  # ~2 KB, compressible


async def test_deflate_is_negotiated_without_context_takeover_and_shrinks_what_is_sent(
    db_url: str, store: Store
) -> None:
    await store.define_flow(CHAIN)
    async with running_gateway(db_url) as gw:
        run_id = await gw.start_run("chain")
        await Driver(store).finish([run_id], output=BLOB)
        log = await log_of(store, run_id)
        plain = await RawClient.open(gw.ws_url)
        deflate = await RawClient.open(gw.ws_url, extensions=[ClientPerMessageDeflateFactory()])
        accepted = deflate.protocol.extensions
        assert [type(e).__name__ for e in accepted] == ["PerMessageDeflate"]
        # Neither side keeps a compression context: one compression serves every socket.
        assert accepted[0].local_no_context_takeover  # type: ignore[attr-defined]
        assert accepted[0].remote_no_context_takeover  # type: ignore[attr-defined]
        for client in (plain, deflate):
            await client.send(orjson.dumps({"type": "subscribe", "run_id": run_id}).decode())
            await client.send(orjson.dumps({"type": "unsubscribe", "run_id": run_id}).decode())
            await client.send('{"type": "ping", "id": "last"}')
        plain_messages = await read_until_pong(plain)
        deflate_messages = await read_until_pong(deflate)
        assert plain_messages == deflate_messages
        assert strip([m for m in deflate_messages if m["type"] == "event"]) == log
        assert deflate.received_bytes < plain.received_bytes / 3


async def test_only_frames_from_deflate_min_bytes_go_compressed(db_url: str, store: Store) -> None:
    await store.define_flow(CHAIN)
    async with running_gateway(db_url) as gw:
        run_id = await gw.start_run("chain")
        await Driver(store).finish([run_id], output=BLOB)
        client = await RawClient.open(gw.ws_url, extensions=[ClientPerMessageDeflateFactory()])
        await client.send(orjson.dumps({"type": "subscribe", "run_id": run_id}).decode())
        await client.send('{"type": "ping", "id": "last"}')
        # Frame headers as sent: (compressed, payload length) per frame, read off the socket.
        loop = asyncio.get_running_loop()
        raw = b""
        headers: list[tuple[bool, int]] = []
        async with asyncio.timeout(TIMEOUT):
            while len(headers) < 9:  # subscribed, 7 events, pong
                raw += await loop.sock_recv(client.sock, 65536)
                while len(raw) >= 2:
                    length, start = raw[1] & 0x7F, 2
                    if length == 126:
                        length, start = int.from_bytes(raw[2:4]), 4
                    if len(raw) < start + length:
                        break
                    headers.append((bool(raw[0] & 0x40), length))
                    raw = raw[start + length:]
        compressed = [length for rsv1, length in headers if rsv1]
        plain = [length for rsv1, length in headers if not rsv1]
        assert len(compressed) == 4  # the three step:completed and run:completed, with BLOB
        assert all(length < 1024 for length in plain)  # subscribed, step:started, pong
        assert len(plain) == 5


async def read_until_pong(client: RawClient) -> list[dict[str, Any]]:
    messages, close_code = await client.read(
        until=lambda got: bool(got) and got[-1] == {"type": "pong", "id": "last"})
    assert close_code is None, "the gateway closed the socket"
    return messages


async def test_a_client_message_in_fragments_is_understood(db_url: str) -> None:
    async with running_gateway(db_url) as gw:
        ws = await open_socket(gw.ws_url)
        await ws.send(['{"type": "pi', 'ng", "id"', ': 7}'])
        assert orjson.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)) == {"type": "pong",
                                                                             "id": 7}
        await ws.close()


async def test_other_websocket_paths_are_not_found(db_url: str) -> None:
    async with running_gateway(db_url) as gw:
        with pytest.raises(InvalidStatus) as refused:
            await open_socket(gw.ws_url.replace("/realtime", "/elsewhere"))
        assert refused.value.response.status_code == 404
        assert orjson.loads(refused.value.response.body or b"")["error"]["code"] == "not_found"


async def test_a_malformed_upgrade_gets_400_and_the_gateway_goes_on(db_url: str) -> None:
    async with running_gateway(db_url) as gw:
        host, port = gw.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /realtime HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n")
        async with asyncio.timeout(TIMEOUT):
            answer = await reader.read()  # read to EOF: the gateway closes
        assert answer.startswith(b"HTTP/1.1 400"), answer[:80]
        writer.close()
        ws = await open_socket(gw.ws_url)
        await ws.send('{"type": "ping", "id": 2}')
        assert orjson.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["id"] == 2
        await ws.close()


async def test_invalid_utf8_in_a_text_frame_closes_with_1007(db_url: str) -> None:
    async with running_gateway(db_url) as gw:
        client = await RawClient.open(gw.ws_url)
        client.protocol.send_frame(Frame(Opcode.TEXT, b'{"type": "\xff"}'))
        await client.flush()
        _, code = await client.read_to_close()
        assert code == 1007
        assert await gw.healthy()


async def test_a_silent_peer_is_pinged_and_one_that_never_answers_is_dropped(
    db_url: str,
) -> None:
    config = GatewayConfig(socket_ping_interval=0.3)
    async with running_gateway(db_url, config=config) as gw:
        # websockets answers pings by itself; its own keepalive is off, so it stays silent.
        answering: ClientConnection = await open_socket(gw.ws_url, ping_interval=None)
        # This one reads but never answers.
        mute = await RawClient.open(gw.ws_url)
        loop = asyncio.get_running_loop()
        seen: list[Opcode] = []
        async with asyncio.timeout(TIMEOUT):
            while True:
                try:
                    data = await loop.sock_recv(mute.sock, 65536)
                except ConnectionResetError:
                    break  # aborted
                if not data:
                    break
                mute.protocol.receive_data(data)
                seen += [f.opcode for f in mute.protocol.events_received()
                         if isinstance(f, Frame)]
        assert Opcode.PING in seen
        mute.sock.close()
        await wait_until(metric_is(gw, "pgflow_sockets_open", 1.0))
        # Silent for as long, the one that answered pings is still served.
        await answering.send('{"type": "ping", "id": 3}')
        assert orjson.loads(await asyncio.wait_for(answering.recv(), TIMEOUT))["id"] == 3
        await answering.close()


def metric_is(gw: RunningGateway, name: str, value: float) -> Any:
    """A ``wait_until`` predicate: the gateway's metric has this value."""
    async def check() -> bool:
        return await gw.metric(name) == value
    return check


async def test_a_socket_whose_replay_is_pending_keeps_its_messages_in_order(
    db_url: str, store: Store
) -> None:
    await store.define_flow(CHAIN)
    async with running_gateway(db_url) as gw:
        run_ids = [await gw.start_run("chain") for _ in range(5)]
        await Driver(store).finish(run_ids)
        follower = await Follower.open(gw.ws_url)
        # Subscribes (each a replay read) and pings interleaved, sent without waiting.
        for index, run_id in enumerate(run_ids):
            await follower.subscribe(run_id)
            await follower.ws.send(orjson.dumps({"type": "ping", "id": index}).decode())
        await wait_until(lambda: len([m for m in follower.others if m["type"] == "pong"]) == 5)
        order = [(m["type"], m.get("run_id") or m.get("id")) for m in follower.messages
                 if m["type"] in ("subscribed", "pong")]
        expected: list[tuple[str, Any]] = []
        for index, run_id in enumerate(run_ids):
            expected += [("subscribed", run_id), ("pong", index)]
        assert order == expected
        await follower.close()


async def test_closed_sockets_leave_nothing_behind(db_url: str, store: Store) -> None:
    await store.define_flow(CHAIN)
    async with running_gateway(db_url) as gw:
        run_id = await gw.start_run("chain")
        sockets = [await open_socket(gw.ws_url) for _ in range(40)]
        for ws in sockets:
            await ws.send(orjson.dumps({"type": "subscribe", "run_id": run_id}).decode())
        for ws in sockets:
            assert orjson.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] == "subscribed"
        for ws in sockets[:20]:
            ws.transport.abort()  # gone without a close frame
        for ws in sockets[20:]:
            await ws.close()
        await wait_until(metric_is(gw, "pgflow_sockets_open", 0.0))
        await wait_until(metric_is(gw, "pgflow_subscriptions", 0.0))

        def alive() -> int:
            gc.collect()
            return sum(isinstance(o, NativeSocket | Session | Client)
                       for o in gc.get_objects())

        await wait_until(lambda: alive() == 0)
        assert not gw.runtime.sockets.open
