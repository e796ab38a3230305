"""Resource tests: the TCP connections a client can make the gateway hold (docs/gateway.md,
"Connection limits"; gateway/_connections.py).

Idle connections past the cap evict the oldest ones that wait for a request, and ``/healthz``,
``run_flow`` and new sockets keep working; with nothing to evict a newcomer gets a 503; an
unfinished request or websocket handshake is closed after ``--request-timeout``; under a low
descriptor limit ``pgflow serve`` never reaches EMFILE and its log stays a few lines.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import resource
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.exceptions import InvalidStatus

from gateway.config import GatewayConfig
from gateway.connections import (
    BURSTS_IN_FLIGHT,
    FILE_HEADROOM,
    MIN_ACCEPT_BURST,
    ConnectionAdmission,
    connection_budget,
    sockets_within,
)
from pgflow.db.store import Store
from pgflow.errors import ConfigurationError
from tests.integration.gateway_harness import (
    CHAIN,
    TIMEOUT,
    open_socket,
    running_gateway,
    wait_until,
)

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
PROMPT = 5.0  # seconds: "answers within a few seconds"


# -- helpers ------------------------------------------------------------------------------------

async def connect(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def idle_connections(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that never send a byte, opened at once."""
    async with asyncio.timeout(TIMEOUT), asyncio.TaskGroup() as group:
        connects = [group.create_task(connect(port)) for _ in range(count)]
    return [c.result() for c in connects]


async def read_to_eof(sock: socket.socket, timeout: float = TIMEOUT) -> bytes:
    """What the gateway sent before it closed the connection."""
    loop = asyncio.get_running_loop()
    received = b""
    async with asyncio.timeout(timeout):
        while True:
            try:
                data = await loop.sock_recv(sock, 65536)
            except ConnectionResetError:
                return received
            if not data:
                return received
            received += data


async def all_closed(socks: list[socket.socket], timeout: float) -> list[bytes]:
    """What each connection received before the gateway closed it; then closes ours (a task
    group, so that no read is left registered on a closed descriptor)."""
    try:
        async with asyncio.TaskGroup() as group:
            reads = [group.create_task(read_to_eof(s, timeout)) for s in socks]
        return [read.result() for read in reads]
    finally:
        for sock in socks:
            sock.close()


async def count_closed(socks: list[socket.socket], count: int, timeout: float) -> list[bytes]:
    """Waits until ``count`` of these connections are closed by the gateway."""
    reads = [asyncio.create_task(read_to_eof(s, timeout)) for s in socks]
    try:
        return [await done for done in itertools.islice(asyncio.as_completed(reads), count)]
    finally:
        for read in reads:
            read.cancel()
        await asyncio.gather(*reads, return_exceptions=True)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def ping_pong(ws_url: str) -> None:
    ws = await open_socket(ws_url)
    try:
        await ws.send(orjson.dumps({"type": "ping", "id": 7}).decode())
        async with asyncio.timeout(PROMPT):
            assert orjson.loads(await ws.recv()) == {"type": "pong", "id": 7}
    finally:
        await ws.close()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


# -- the budget (no sockets) --------------------------------------------------------------------

def test_the_default_cap_leaves_room_for_the_database_files_and_accept_bursts() -> None:
    budget = connection_budget(None, descriptors=4096, open_now=20, database_connections=11)
    assert budget.accept_burst == 64
    assert budget.reserved == 20 + 11 + FILE_HEADROOM + BURSTS_IN_FLIGHT * 64
    assert budget.limit == 4096 - budget.reserved
    low = connection_budget(None, descriptors=256, open_now=20, database_connections=11)
    assert low.accept_burst == MIN_ACCEPT_BURST
    assert 0 < low.limit < 256 - 20 - 11 - FILE_HEADROOM


def test_a_configured_cap_is_kept_below_the_descriptor_limit() -> None:
    small = connection_budget(50, descriptors=4096, open_now=20, database_connections=11)
    assert (small.limit, small.clamped) == (50, False)
    large = connection_budget(100_000, descriptors=4096, open_now=20, database_connections=11)
    assert large.clamped
    assert large.limit == 4096 - large.reserved
    unlimited = connection_budget(None, descriptors=None, open_now=20, database_connections=11)
    assert unlimited.limit > 100_000


def test_a_descriptor_limit_with_no_room_for_connections_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match=r"ulimit -n: 100.*raise it to at least"):
        connection_budget(None, descriptors=100, open_now=20, database_connections=11)


def test_the_options_are_validated() -> None:
    with pytest.raises(ConfigurationError, match="max_connections"):
        GatewayConfig(max_connections=0)
    with pytest.raises(ConfigurationError, match="request_timeout"):
        GatewayConfig(request_timeout=0)
    config = GatewayConfig.from_env({"PGFLOW_MAX_CONNECTIONS": "300",
                                     "PGFLOW_REQUEST_TIMEOUT": "2.5"})
    assert (config.max_connections, config.request_timeout) == (300, 2.5)
    assert GatewayConfig.from_env({}).max_connections is None


# -- in process: the cap, the refusal, the deadlines --------------------------------------------

async def test_idle_connections_past_the_cap_are_evicted_and_the_gateway_keeps_serving(
    db_url: str, store: Store,
) -> None:
    await store.define_flow(CHAIN)
    config = GatewayConfig(max_connections=20, request_timeout=60)
    async with running_gateway(db_url, config=config) as gw:
        port = port_of(gw.url)
        idle = await idle_connections(port, 60)
        async with httpx.AsyncClient(base_url=gw.url, trust_env=False, timeout=PROMPT) as http:
            assert (await http.get("/healthz")).status_code == 200
            started = await http.post("/rpc/run_flow", json={"flow_slug": "chain"})
            assert started.status_code == 201, started.text
        await ping_pong(gw.ws_url)
        admission = gw.server.admission
        assert admission.evicted >= 40
        assert admission.refused == 0
        # Those evicted were closed without a word, long before the request timeout.
        assert await count_closed(idle, 40, PROMPT) == [b""] * 40
        for sock in idle:
            sock.close()
        page = gw.runtime.metrics.render()
        assert metric(page, "pgflow_connections_evicted_total") == admission.evicted
        assert metric(page, "pgflow_connections_limit") == 20
        assert metric(page, "pgflow_connections_open") <= 20 + 1


async def test_with_nothing_to_evict_a_new_connection_gets_a_503(db_url: str) -> None:
    config = GatewayConfig(max_connections=4, request_timeout=60)
    async with running_gateway(db_url, config=config) as gw:
        sockets = [await open_socket(gw.ws_url) for _ in range(4)]
        try:
            refused = await connect(port_of(gw.url))
            answer = await read_to_eof(refused, PROMPT)
            refused.close()
            assert answer.startswith(b"HTTP/1.1 503 "), answer
            assert b"retry-after: 1" in answer
            assert b'"code":"unavailable"' in answer
            assert gw.server.admission.refused == 1
            assert metric(gw.runtime.metrics.render(), "pgflow_connections_refused_total") == 1
        finally:
            await sockets.pop().close()
        # A slot is free again (once the server saw the close): served.
        connections = gw.server.admission.connections
        await wait_until(lambda: len(connections) < 4)
        assert await gw.healthy()
        for ws in sockets:
            await ws.close()


async def test_sockets_leave_http_a_tenth_of_the_connections(db_url: str) -> None:
    # Open sockets are never evicted: were they allowed up to the cap, a client opening them
    # would keep /healthz and run_flow out.
    config = GatewayConfig(max_connections=20, request_timeout=60)
    async with running_gateway(db_url, config=config) as gw:
        assert gw.runtime.sockets.limit == 18
        sockets = [await open_socket(gw.ws_url) for _ in range(18)]
        try:
            with pytest.raises(InvalidStatus) as refused:
                await open_socket(gw.ws_url)
            assert refused.value.response.status_code == 429
            async with httpx.AsyncClient(base_url=gw.url, trust_env=False,
                                         timeout=PROMPT) as http:
                assert (await http.get("/healthz")).status_code == 200
            assert gw.server.admission.refused == 0
        finally:
            for ws in sockets:
                await ws.close()


def test_the_socket_share_of_the_cap() -> None:
    assert sockets_within(4000, 10_000) == 3600
    assert sockets_within(4000, 100) == 100  # --max-sockets lower still
    assert sockets_within(4, 10_000) == 4  # too small a cap to share
    assert sockets_within(1, 10_000) == 1


async def test_unfinished_requests_and_handshakes_are_timed_out(db_url: str) -> None:
    timeout = 0.5
    config = GatewayConfig(request_timeout=timeout)
    async with running_gateway(db_url, config=config) as gw:
        port = port_of(gw.url)
        established = await open_socket(gw.ws_url)
        silent = await connect(port)
        partial = await connect(port)
        partial.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        handshake = await connect(port)
        handshake.sendall(b"GET /realtime HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                          b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n")
        body = await connect(port)
        body.sendall(b"POST /rpc/run_flow HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"flow_")
        trickle = await connect(port)

        async def trickling() -> None:  # a byte every 50 ms: each used to cancel the timer
            loop = asyncio.get_running_loop()
            await loop.sock_sendall(trickle, b"GET / HTTP/1.1\r\n")
            try:
                while True:
                    await loop.sock_sendall(trickle, b"x")
                    await asyncio.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                return  # the gateway closed it

        sender = asyncio.create_task(trickling())
        limit = timeout + 3.0
        answers = await all_closed([silent, partial, handshake, body], limit)
        assert answers[0] == b""  # never asked anything: closed without a word
        assert answers[1].startswith(b"HTTP/1.1 408 ")
        assert answers[2].startswith(b"HTTP/1.1 408 ")
        async with asyncio.timeout(limit):
            await sender
        trickle.close()
        assert gw.server.admission.timed_out >= 5
        assert metric(gw.runtime.metrics.render(), "pgflow_connections_timed_out_total") >= 5
        # An open websocket is past its handshake: the deadline does not apply to it.
        await established.send(orjson.dumps({"type": "ping", "id": 1}).decode())
        async with asyncio.timeout(PROMPT):
            assert orjson.loads(await established.recv()) == {"type": "pong", "id": 1}
        await established.close()
        # A request that completes in time is served on the same kind of connection.
        assert await gw.healthy()


def test_the_limit_is_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    class Handle:
        def cancel(self) -> None:
            pass

    class Loop:  # enough of a loop for the admission's timers
        def __init__(self) -> None:
            self.now = 0.0
            self.timers: list[tuple[float, object]] = []

        def time(self) -> float:
            return self.now

        def call_later(self, delay: float, callback: object) -> object:
            self.timers.append((self.now + delay, callback))
            return Handle()

        def get_exception_handler(self) -> None:
            return None

        def set_exception_handler(self, handler: object) -> None:
            self.handler = handler

    budget = connection_budget(2, descriptors=None, open_now=0, database_connections=0)
    admission = ConnectionAdmission(budget, request_timeout=60, log_interval=10)
    loop = Loop()
    admission.install(loop)  # type: ignore[arg-type]
    caplog.set_level("WARNING", logger="gateway.connections")
    for _ in range(10_000):
        assert not admission.admit(open_now=2)  # nothing waits: refused
    assert len(caplog.records) == 1
    assert "connection limit reached" in caplog.text
    loop.now, summarise = loop.timers.pop()
    summarise()  # type: ignore[operator]
    assert len(caplog.records) == 2
    assert "9999 refused" in caplog.records[1].getMessage()
    loop.now, summarise = loop.timers.pop()
    summarise()  # type: ignore[operator]  # a quiet interval: no line, and the next is at once
    assert len(caplog.records) == 2
    assert not loop.timers
    loop.handler(loop, {"message": "socket.accept() out of system resource"})  # type: ignore[operator]
    assert admission.accept_failures == 1
    assert len(caplog.records) == 3
    admission.close()


# -- pgflow serve under a low descriptor limit --------------------------------------------------

DESCRIPTORS = 256
IDLE = 400  # past the descriptor limit


@pytest.fixture
async def low_limit_serve(db_url: str) -> AsyncIterator[tuple[str, list[bytes]]]:
    """``pgflow serve`` with ``ulimit -n 256``, default cap, 2 s request timeout: its URL and
    its stderr lines (read all along, so a flood could not block it)."""
    launcher = (f"import resource, runpy, sys; "
                f"resource.setrlimit(resource.RLIMIT_NOFILE, ({DESCRIPTORS}, {DESCRIPTORS})); "
                f"sys.argv = ['pgflow'] + sys.argv[1:]; "
                f"runpy.run_module('pgflow', run_name='__main__')")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", launcher, "--log-level", "info", "serve",
        "--database-url", db_url, "--host", HOST, "--port", "0",
        "--flows", "examples.flows", "--request-timeout", "2",
        cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    lines: list[bytes] = []

    async def drain() -> None:
        assert process.stderr is not None
        async for line in process.stderr:
            lines.append(line)

    drainer = asyncio.create_task(drain())
    try:
        assert process.stdout is not None
        async with asyncio.timeout(TIMEOUT * 2):
            line = (await process.stdout.readline()).decode()
        assert line.startswith(f"pgflow gateway listening on http://{HOST}:"), (line, lines)
        yield line.rsplit(" ", 1)[1].strip(), lines
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(TIMEOUT):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        drainer.cancel()


async def test_idle_connections_past_the_descriptor_limit_leave_pgflow_serve_serving(
    low_limit_serve: tuple[str, list[bytes]],
) -> None:
    url, log = low_limit_serve
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < IDLE + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, IDLE + 200), hard))
    idle = await idle_connections(port_of(url), IDLE)
    try:
        async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=PROMPT) as http:
            assert (await http.get("/healthz")).status_code == 200
            started = await http.post("/rpc/run_flow", json={"flow_slug": "fanout",
                                                             "input": {"start": 1}})
            assert started.status_code == 201, started.text
            await ping_pong(url.replace("http://", "ws://") + "/realtime")
            page = (await http.get("/metrics")).text
        limit = metric(page, "pgflow_connections_limit")
        assert 0 < limit < DESCRIPTORS
        assert metric(page, "pgflow_connections_evicted_total") >= IDLE - limit
        assert metric(page, "pgflow_accept_errors_total") == 0
        # Every idle connection is closed: evicted at once, or at the 2 s request timeout.
        await all_closed(idle, 2.0 + PROMPT)
        async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=PROMPT) as http:
            page = (await http.get("/metrics")).text
        assert metric(page, "pgflow_connections_timed_out_total") > 0
        assert metric(page, "pgflow_connections_open") < 10
    finally:
        for sock in idle:
            sock.close()
    text = b"".join(log).decode(errors="replace")
    assert "out of system resource" not in text
    assert "Too many open files" not in text
    assert len(log) < 50, text[-5000:]
    assert "connection limit reached" in text
