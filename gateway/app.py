"""The gateway application: ``create_app`` composes it, ``lifespan`` runs it.

``create_app(database_url, flows=..., config=...)`` returns a Starlette app that can run alone
(``server.GatewayServer``) or be mounted in a bigger Starlette/FastAPI app. A mounted app gets
no lifespan events of its own, so the parent enters ``lifespan(gateway_app)`` from its own
lifespan (docs/gateway.md).

The gateway does not know the worker: whoever wants one beside it (``pgflow serve
--with-worker``, ``pgflow demo``) passes it as a side task, and its flow sync as ``sync_flows``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.asgi_socket import AsgiSocketEndpoint
from gateway.auth import OriginPolicy
from gateway.config import GatewayConfig
from gateway.http import error_response, http_exception, http_routes, internal_error
from gateway.metrics import Metrics
from gateway.runtime import FlowSync, GatewayRuntime, SideTask, define_flows
from pgflow.flows import Flow

STATE_KEY = "pgflow_gateway"  # app.state attribute holding the GatewayRuntime

__all__ = ["GatewayRuntime", "SideTask", "create_app", "find_runtime", "lifespan", "runtime_of"]


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


_FORBIDDEN_HOST = error_response(
    "forbidden", "the Host header does not name this gateway (list its public origin with "
    "--public-origin)", 403)


class GatewayMiddleware:
    """Counts HTTP answers by status, checks the Host header, and hands ``/realtime`` sockets
    straight to their endpoint (past Starlette's per-message exception wrapper)."""

    def __init__(self, app: ASGIApp, origins: OriginPolicy, metrics: Metrics,
                 realtime: ASGIApp) -> None:
        self.app = app
        self.origins = origins
        self.metrics = metrics
        self.realtime = realtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket" and _route_path(scope) == "/realtime":
            await self.realtime(scope, receive, send)
            return
        if kind != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            origins = self.origins
            if origins.hosts is not None and not origins.allows_host(_header(scope, b"host")):
                await _FORBIDDEN_HOST(scope, receive, counting_send)
            else:
                await self.app(scope, receive, counting_send)
        finally:
            self.metrics.http_requests[status] += 1


def find_runtime(app: Starlette) -> GatewayRuntime | None:
    runtime = getattr(app.state, STATE_KEY, None)
    return runtime if isinstance(runtime, GatewayRuntime) else None


def runtime_of(app: Starlette) -> GatewayRuntime:
    runtime = find_runtime(app)
    if runtime is None:
        raise RuntimeError(f"{app!r} was not made by gateway.app.create_app")
    return runtime


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """The gateway's lifespan; a parent app that mounts the gateway enters it in its own."""
    runtime = runtime_of(app)
    await runtime.start()
    try:
        async with asyncio.TaskGroup() as tasks:
            runtime.spawn(tasks)
            try:
                await runtime.wait_listening()
                yield
            finally:
                await runtime.stop()
    finally:
        await runtime.close()


def create_app(
    database_url: str,
    *,
    flows: Iterable[Flow] = (),
    config: GatewayConfig | None = None,
    side_tasks: Sequence[SideTask] = (),
    sync_flows: FlowSync = define_flows,
) -> Starlette:
    """The gateway as an ASGI app: HTTP API, ``/realtime``, ``/client.js``, ``/``.

    Args:
        database_url: the PostgreSQL the engine lives in (migrated on startup).
        flows: flows to define on startup; their ``public``, ``description`` and
            ``example_input`` show in ``/flows``.
        config: limits and access; the default is a public gateway.
        side_tasks: more long-lived jobs for the lifespan to run (and stop), e.g. a worker.
        sync_flows: how ``flows`` are defined in the database on startup.
    """
    config = config or GatewayConfig()
    runtime = GatewayRuntime(database_url, flows, config, side_tasks=side_tasks,
                             sync_flows=sync_flows)
    realtime = AsgiSocketEndpoint(runtime.sockets)
    middleware = [Middleware(GatewayMiddleware, origins=runtime.auth.origins,
                             metrics=runtime.metrics, realtime=realtime)]
    if config.cors_origins:
        middleware.append(Middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "If-None-Match", "Idempotency-Key"],
            expose_headers=["ETag", "Location"],
            max_age=600,
        ))
    routes = http_routes(
        auth=runtime.auth, flows=runtime.flows, store=runtime.require_store,
        metrics=runtime.metrics, max_body_bytes=config.max_body_bytes,
        unhealthy=runtime.unhealthy, open_sockets=lambda: len(runtime.fanout.clients),
        http_secret=config.http_secret,
    )
    app = Starlette(
        routes=[*routes, WebSocketRoute("/realtime", realtime)],
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_exception, Exception: internal_error},
    )
    setattr(app.state, STATE_KEY, runtime)
    return app
