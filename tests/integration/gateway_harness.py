"""Helpers of the gateway tests: a gateway under uvicorn on 127.0.0.1, flows, a step driver and
websocket clients that follow docs/reference/websocket.md (``websockets`` only, no project code).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.extensions import ClientExtensionFactory
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from gateway.app import GatewayRuntime, create_app, runtime_of
from gateway.config import GatewayConfig
from gateway.server import GatewayServer
from pgflow.db.store import Completion, Store
from pgflow.flows import Flow
from pgflow.serve import create_app_with_worker

TIMEOUT = 20.0  # seconds any single wait in these tests may take
TERMINAL = {"run:completed", "run:failed"}

CHAIN = {"slug": "chain", "steps": [
    {"slug": "a"}, {"slug": "b", "depends_on": ["a"]}, {"slug": "c", "depends_on": ["b"]},
]}
WIDE = {"slug": "wide", "steps": [
    {"slug": "root"},
    *({"slug": f"s{i}", "depends_on": ["root"]} for i in range(8)),
    {"slug": "join", "depends_on": [f"s{i}" for i in range(8)]},
]}


@dataclass
class RunningGateway:
    app: Starlette
    runtime: GatewayRuntime
    server: GatewayServer
    url: str
    http: httpx.AsyncClient

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/realtime"

    async def start_run(self, flow_slug: str, input: Any = None,
                        headers: dict[str, str] | None = None) -> str:
        response = await self.http.post("/rpc/run_flow", json={"flow_slug": flow_slug,
                                                                "input": input}, headers=headers)
        assert response.status_code == 201, response.text
        run_id: str = response.json()["run_id"]
        return run_id

    async def metric(self, name: str) -> float:
        text = (await self.http.get("/metrics")).text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"no metric {name}")

    async def healthy(self) -> bool:
        return (await self.http.get("/healthz")).status_code == 200


@contextlib.asynccontextmanager
async def running_gateway(
    database_url: str, *, flows: Iterable[Flow] = (), config: GatewayConfig | None = None,
    with_worker: bool = False,
) -> AsyncIterator[RunningGateway]:
    if with_worker:
        app = create_app_with_worker(database_url, flows=list(flows), config=config)
    else:
        app = create_app(database_url, flows=flows, config=config)
    server = GatewayServer(app)
    url = await server.start()
    try:
        async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=TIMEOUT) as http:
            yield RunningGateway(app, runtime_of(app), server, url, http)
    finally:
        await server.stop()


async def open_socket(url: str, **kwargs: Any) -> ClientConnection:
    kwargs.setdefault("proxy", None)
    kwargs.setdefault("open_timeout", TIMEOUT)
    kwargs.setdefault("max_size", 2**24)  # a run's output can be large (all its leaves)
    return await connect(url, **kwargs)


async def wait_until(predicate: Any, timeout: float = TIMEOUT, interval: float = 0.02) -> None:
    """Polls an async or plain predicate (for state with no event to await, e.g. metrics)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


@dataclass
class Follower:
    """One websocket, following runs: collects each run's events in arrival order."""

    ws: ClientConnection
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    others: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)  # everything, in order
    done: dict[str, asyncio.Event] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    close_code: int | None = None

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> Follower:
        follower = cls(await open_socket(url, **kwargs))
        follower.task = asyncio.create_task(follower._read())
        return follower

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for raw in self.ws:
                message = orjson.loads(raw)
                self.messages.append(message)
                if message.get("type") == "event":
                    run_events = self.events.setdefault(message["run_id"], [])
                    run_events.append(message)
                    if message["event"] in TERMINAL:
                        self.done.setdefault(message["run_id"], asyncio.Event()).set()
                else:
                    self.others.append(message)
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code

    async def subscribe(self, run_id: str, since: int = 0) -> None:
        self.done.setdefault(run_id, asyncio.Event())
        await self.ws.send(orjson.dumps({"type": "subscribe", "run_id": run_id,
                                         "since": since}).decode())

    async def wait_done(self, run_id: str, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            await self.done.setdefault(run_id, asyncio.Event()).wait()
        return self.events[run_id]

    async def close(self) -> None:
        await self.ws.close()
        if self.task is not None:
            await self.task


class RawClient:
    """A websocket client that touches the socket only when told (websockets' sans-I/O
    protocol): it can stop reading, send raw bytes, and see every frame as it came."""

    def __init__(self, sock: socket.socket, protocol: ClientProtocol) -> None:
        self.sock = sock
        self.protocol = protocol
        self.received_bytes = 0

    @classmethod
    async def open(cls, url: str, *, receive_buffer: int | None = None,
                   extensions: Sequence[ClientExtensionFactory] = ()) -> RawClient:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        uri = parse_uri(url)
        await loop.sock_connect(sock, (uri.host, uri.port))
        protocol = ClientProtocol(uri, max_size=2**24, extensions=list(extensions) or None)
        protocol.send_request(protocol.connect())
        client = cls(sock, protocol)
        await client.flush()
        async with asyncio.timeout(TIMEOUT):
            while not protocol.events_received():
                protocol.receive_data(await loop.sock_recv(sock, 65536))
        assert protocol.handshake_exc is None, protocol.handshake_exc
        return client

    async def flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def send(self, text: str) -> None:
        self.protocol.send_text(text.encode())
        await self.flush()

    async def read(self, until: Callable[[list[dict[str, Any]]], bool] | None = None,
                   ) -> tuple[list[dict[str, Any]], int | None]:
        """Reads JSON messages until ``until(messages)`` holds or the gateway closes: the
        messages, and the close code (None if still open)."""
        loop = asyncio.get_running_loop()
        messages: list[dict[str, Any]] = []
        async with asyncio.timeout(TIMEOUT):
            while until is None or not until(messages):
                data = await loop.sock_recv(self.sock, 65536)
                self.received_bytes += len(data)
                if data:
                    self.protocol.receive_data(data)
                else:
                    self.protocol.receive_eof()
                for frame in self.protocol.events_received():
                    if isinstance(frame, Frame) and frame.opcode is Opcode.TEXT:
                        messages.append(orjson.loads(frame.data))
                await self.flush()
                if not data or self.protocol.close_rcvd is not None:
                    self.sock.close()
                    break
        close = self.protocol.close_rcvd
        return messages, close.code if close is not None else None

    async def read_to_close(self) -> tuple[list[dict[str, Any]], int | None]:
        return await self.read()

    async def push(self, data: bytes, *, stall: float = 1.0, piece: int = 65536) -> int:
        """Sends raw bytes until all are sent or the gateway takes none for ``stall`` seconds
        (it stopped reading this socket). Returns the bytes sent; the stream is left as it is."""
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        sent = 0
        while sent < len(view):
            try:
                async with asyncio.timeout(stall):
                    await loop.sock_sendall(self.sock, view[sent:sent + piece])
            except TimeoutError:
                break
            sent += piece
        return min(sent, len(view))

    def reset(self) -> None:
        """Drops the connection with a TCP reset (SO_LINGER 0): gone without a word."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


class Driver:
    """Plays the worker through the store: claims ready tasks and completes them."""

    def __init__(self, store: Store, worker_id: str = "test-driver") -> None:
        self.store = store
        self.worker_id = worker_id

    async def step(self, max_tasks: int = 100, output: Any = None) -> int:
        tasks = await self.store.claim_tasks(self.worker_id, max_tasks)
        if tasks:
            await self.store.report(self.worker_id, [
                Completion(t.run_id, t.step_slug, t.attempt,
                           output if output is not None else {"step": t.step_slug})
                for t in tasks
            ])
        return len(tasks)

    async def finish(self, run_ids: Iterable[str], output: Any = None) -> None:
        """Completes every step of these runs (and any other ready ones)."""
        pending = {uuid.UUID(r) for r in run_ids}
        async with asyncio.timeout(TIMEOUT):
            while pending:
                await self.step(output=output)
                for run_id in list(pending):
                    run = await self.store.get_run(run_id)
                    assert run is not None
                    if run["status"] != "started":
                        pending.discard(run_id)


async def log_of(store: Store, run_id: str) -> list[dict[str, Any]]:
    return await store.get_run_events(uuid.UUID(run_id))


def rss_bytes() -> int:
    """This process's resident memory (the gateway runs in the test's process)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def strip(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k != "type"} for e in events]


async def fresh_database(server_url: str, template: str, name: str) -> str:
    """A database of our own from the migrated template (for module-scoped gateways)."""
    from urllib.parse import urlsplit, urlunsplit

    import asyncpg

    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f"drop database if exists {name} with (force)")
        await admin.execute(f"create database {name} template {template}")
    finally:
        await admin.close()
    return urlunsplit(urlsplit(server_url)._replace(path="/" + name))


async def drop_database(server_url: str, name: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f"drop database if exists {name} with (force)")
    finally:
        await admin.close()
