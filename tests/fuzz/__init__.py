"""Fuzzing the gateway with hypothesis (docs/reference/ is the oracle).

Hypothesis drives plain (synchronous) test functions, so each fuzz module runs ONE real gateway
(uvicorn on 127.0.0.1, port 0, through ``tests.integration.gateway_harness``) on an event loop
of its own in a background thread, and talks to it with synchronous clients (``httpx.Client``,
``websockets.sync``). That keeps hypothesis' shrinking: a failing input is reduced to a minimal
one.

``PGFLOW_FUZZ_EXAMPLES`` sets the number of examples per fuzz test (default: a few hundred, for
CI); the full run is ``PGFLOW_FUZZ_EXAMPLES=10000 pytest tests/fuzz``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import jwt
from hypothesis import HealthCheck, settings

from gateway.config import GatewayConfig
from pgflow.flows import Flow
from tests.conftest import TEMPLATE_DB
from tests.integration.gateway_harness import (
    RunningGateway,
    drop_database,
    fresh_database,
    running_gateway,
)
from tests.threaded import on_a_thread

# Every error code of docs/reference/http.md, with its HTTP status.
ERROR_STATUS = {
    "bad_json": 400,
    "bad_request": 400,
    "invalid_flow": 400,
    "invalid_input": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "idempotency_conflict": 422,
    "too_large": 413,
    "too_many_subscriptions": 429,
    "too_many_connections": 429,
    "unavailable": 503,
}
SOCKET_ERROR_CODES = set(ERROR_STATUS) - {"method_not_allowed", "invalid_flow", "invalid_input",
                                          "conflict", "idempotency_conflict"}
CLOSE_CODES = {1000, 1001, 1008, 1009, 1011, 1012, 1013, 4001}


SECRET = "a-fuzzing-secret-that-is-long-enough-for-hs256"


def good_token(sub: str = "alice", **claims: Any) -> str:
    """A valid HS256 token for the fuzzed gateways (they share ``SECRET``)."""
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 3600, **claims}, SECRET, "HS256")


def fuzz_settings(default_examples: int) -> settings:
    return settings(
        max_examples=examples(default_examples), deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                               HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


def eventually(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Whether ``predicate`` became true within ``timeout`` seconds.

    The gateway's counters are only observable by asking, so these synchronous tests poll,
    bounded, instead of waiting a fixed time.
    """
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        pause.wait(interval)
    return True


def examples(default: int) -> int:
    """The number of examples a fuzz test runs (``PGFLOW_FUZZ_EXAMPLES`` overrides)."""
    value = os.environ.get("PGFLOW_FUZZ_EXAMPLES")
    return int(value) if value else default


class ThreadedGateway:
    """A gateway serving from its own event loop in a thread; ``call`` runs a coroutine there."""

    def __init__(self, running: RunningGateway, loop: asyncio.AbstractEventLoop) -> None:
        self.running = running
        self.loop = loop
        self.url = running.url
        self.ws_url = running.ws_url

    def call(self, coroutine: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)


@contextmanager
def threaded_gateway(
    server_url: str, name_prefix: str, *, config: GatewayConfig | None = None,
    flows: Iterable[Flow] = (), shapes: Iterable[dict[str, Any]] = (),
) -> Iterator[ThreadedGateway]:
    """Runs a gateway on a fresh database in a thread until the block ends."""
    name = f"{name_prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"

    async def serve(loop: asyncio.AbstractEventLoop, ready: Callable[[ThreadedGateway], None],
                    stop: asyncio.Event) -> None:
        url = await fresh_database(server_url, TEMPLATE_DB, name)
        try:
            async with running_gateway(url, flows=flows, config=config) as running:
                for shape in shapes:
                    await running.runtime.require_store().define_flow(shape)
                ready(ThreadedGateway(running, loop))
                await stop.wait()
        finally:
            await drop_database(server_url, name)

    with on_a_thread(serve, f"gateway-{name}") as gateway:
        yield gateway
