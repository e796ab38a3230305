"""The gateway application: ``create_app``, its lifespan, and ``pgflow serve``.

``create_app(database_url, flows=..., config=...)`` returns a Starlette app that can run alone
or be mounted in a bigger Starlette/FastAPI app. A mounted app gets no lifespan events of its
own, so the parent must enter ``lifespan(gateway_app)`` from its own lifespan (docs/gateway.md).

The lifespan owns everything long-lived: the pool, the LISTEN connection and the relay tasks
(and the worker with ``with_worker``), as named tasks of one ``asyncio.TaskGroup``. A side task
that stops is a fatal error: it is logged and the service is stopped (``Gateway.on_fatal``).
Shutdown order: stop accepting sockets, close them with 1001, cancel the tasks, close the pool.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import importlib.util
import itertools
import logging
import math
import os
import re
import signal
import socket
from collections.abc import AsyncIterator, Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from gateway._connections import (
    LISTEN_BACKLOG,
    WORKER_DESCRIPTORS,
    ConnectionAdmission,
    sockets_within,
)
from gateway.auth import Authenticator
from gateway.config import GatewayConfig
from gateway.endpoints import error_response, http_exception, http_routes, internal_error
from gateway.fanout import CLOSE_GOING_AWAY, Fanout
from gateway.listener import APPLICATION_NAME as LISTENER_NAME
from gateway.listener import READ_PAGE, Relay
from gateway.metrics import Metrics
from gateway.protocol import NOTIFY_CHANNEL
from gateway.realtime import RealtimeEndpoint
from gateway.websocket import RealtimeServer
from pgflow.db.listen import Listener
from pgflow.db.migrate import migrate_url
from pgflow.db.store import Store, translate_errors
from pgflow.errors import ConfigurationError, DatabaseUnavailableError
from pgflow.flows import Flow, load_flows

if TYPE_CHECKING:
    from gateway.realtime import Connection

logger = logging.getLogger(__name__)

DEFAULT_WS_IMPLEMENTATION = "websockets-sansio"  # uvicorn's; docs/design/fanout.md
STARTUP_LISTEN_TIMEOUT = 10.0  # seconds the lifespan waits for the first LISTEN
SWEEP_SLICE = 500  # sockets the sweeper examines between yields to the event loop
MIN_SERVER_FRAME_LIMIT = 1024 * 1024  # uvicorn's own frame limit, above ours (see GatewayServer)


def _terminate_process(exc: BaseException) -> None:
    # Whatever server runs us handles SIGTERM as a graceful shutdown.
    signal.raise_signal(signal.SIGTERM)


class Gateway:
    """One gateway's runtime: store, fan-out, listener, sockets. ``app.state.gateway``."""

    def __init__(self, database_url: str, flows: Iterable[Flow], config: GatewayConfig,
                 *, with_worker: bool = False) -> None:
        self.database_url = database_url
        self.config = config
        self.flows: dict[str, Flow] = {}
        for flow in flows:
            if flow.slug in self.flows and self.flows[flow.slug] is not flow:
                raise ConfigurationError(f"two flows are named {flow.slug!r}")
            self.flows[flow.slug] = flow
        self.with_worker = with_worker
        self.metrics = Metrics()
        self.fanout = Fanout(max_frames=config.socket_buffer_frames,
                             max_bytes=config.socket_buffer_bytes)
        self.auth = Authenticator(config, {s: f.public for s, f in self.flows.items()})
        # A log read never brings more than an outbox takes before it is flow-controlled.
        self.read_page = min(READ_PAGE, self.fanout.soft_frames)
        self.store: Store | None = None
        self.listener: Listener | None = None
        self.relay: Relay | None = None
        self.worker: Any = None
        self.connections: set[Connection] = set()
        # Sockets admitted at once: --max-sockets, lowered by GatewayServer to leave HTTP a
        # share of the connection cap.
        self.socket_limit = config.max_sockets
        self.socket_numbers = itertools.count(1)  # names sockets in the log
        self.stopping = False
        self.failed: BaseException | None = None
        self.on_fatal: Callable[[BaseException], None] = _terminate_process
        self._tasks: list[asyncio.Task[None]] = []
        self._idle: asyncio.Event | None = None
        metrics = self.metrics
        metrics.observe("pgflow_sockets_open", "gauge", "websockets open",
                        lambda: len(self.fanout.clients))
        metrics.observe("pgflow_subscriptions", "gauge", "run subscriptions of open websockets",
                        lambda: self.fanout.subscription_count)
        metrics.observe("pgflow_listener_connected", "gauge", "1 while LISTEN is up, else 0",
                        lambda: int(self.listener is not None and self.listener.connected))
        metrics.observe("pgflow_listener_reconnects_total", "counter",
                        "LISTEN connections re-established",
                        lambda: self.listener.reconnects if self.listener is not None else 0)
        metrics.observe("pgflow_slow_sockets_dropped_total", "counter",
                        "sockets closed with 1013: outbox overflowed or stalled",
                        lambda: self.fanout.dropped_slow)
        metrics.observe("pgflow_frames_queued_total", "counter",
                        "frames put in socket outboxes", lambda: self.fanout.frames_queued)
        if with_worker:
            metrics.observe("pgflow_worker_stuck_threads", "gauge",
                            "plain handlers still in their threads past their attempt",
                            lambda: self.worker.stuck_threads if self.worker else 0)
            metrics.observe("pgflow_worker_unreported_results", "gauge",
                            "finished attempts the worker has not reported yet",
                            lambda: self.worker.unreported if self.worker else 0)
            metrics.observe("pgflow_worker_refused_results_total", "counter",
                            "results the database refused, failed or dropped instead",
                            lambda: self.worker.refused_results if self.worker else 0)

    # -- used by the endpoints --------------------------------------------------------------

    def require_store(self) -> Store:
        if self.store is None:
            raise DatabaseUnavailableError("the gateway is not started")
        return self.store

    def relay_request_read(self, run_id: str) -> None:
        if self.relay is not None:
            self.relay.request_read(run_id)

    def forget(self, connection: Connection) -> None:
        self.connections.discard(connection)
        if not self.connections and self._idle is not None:
            self._idle.set()

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Migrates, opens the pool, defines the loaded flows. Idempotent."""
        if self.store is not None:
            return
        if self.config.migrate:
            with translate_errors():
                await migrate_url(self.database_url)
        store = await Store.open(self.database_url, max_size=self.config.pool_size)
        try:
            await _sync_flows(store, list(self.flows.values()))
            if self.with_worker:
                self.worker = _make_worker(self.database_url, list(self.flows.values()),
                                           self.config.worker_options)
        except BaseException:
            await store.close()
            raise
        self.store = store

    def spawn(self, tasks: asyncio.TaskGroup) -> None:
        """Starts the long-lived tasks in the lifespan's TaskGroup."""
        store = self.require_store()
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.listener = Listener(
            self.database_url, NOTIFY_CHANNEL, queue, application_name=LISTENER_NAME,
            health_interval=self.config.listener_health_interval,
            health_timeout=self.config.listener_health_timeout,
        )
        self.relay = Relay(self.fanout, store, self.metrics, queue, page=self.read_page)
        side_tasks: list[tuple[str, Any]] = [
            ("pgflow-listener", self.listener.run()),
            ("pgflow-relay", self.relay.consume()),
            ("pgflow-log-reader", self.relay.read_loop()),
            ("pgflow-socket-sweeper", self._sweep_stalled_sockets()),
        ]
        if self.worker is not None:
            side_tasks.append(("pgflow-worker", self.worker.run()))
        self._tasks = [tasks.create_task(self._supervise(name, coro), name=name)
                       for name, coro in side_tasks]

    async def _supervise(self, name: str, coro: Any) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._fatal(name, exc)
            raise
        if not self.stopping:
            error = RuntimeError(f"side task {name} exited")
            self._fatal(name, error)
            raise error

    async def _sweep_stalled_sockets(self) -> None:
        """Drops sockets whose peer stopped reading for the stall timeout (1013), and pings
        silent ones (the gateway's own protocol; uvicorn pings its ASGI sockets itself).

        The outbox bound catches a stalled peer only while live events flow; this catches it
        when nothing new is queued, or when all it waits for comes from the log. The sweep
        yields to the loop every ``SWEEP_SLICE`` sockets, and spreads pings over the interval
        (at most twice an even share per sweep): each ping is a syscall, and 10,000 sockets
        opened together would otherwise all be pinged in one ~75 ms burst that delays events.
        """
        timeout = self.config.socket_stall_timeout
        ping_interval = self.config.socket_ping_interval
        period = max(0.05, min(1.0, timeout / 4, ping_interval / 4 or 1.0))
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            connections = list(self.connections)
            budget = 0
            if ping_interval > 0:
                budget = max(64, math.ceil(2 * len(connections) * period / ping_interval))
            now = loop.time()
            for index, connection in enumerate(connections):
                if index and index % SWEEP_SLICE == 0:
                    await asyncio.sleep(0)
                    now = loop.time()
                since = connection.sending_since
                if since is not None and now - since > timeout:
                    logger.info("socket %s stalled for %.1fs, dropping it", connection.number,
                                now - since, extra={"action": "socket_stalled"})
                    self.fanout.drop(connection.client)
                if ping_interval > 0 and connection.keepalive(now, ping_interval, budget > 0):
                    budget -= 1

    def _fatal(self, name: str, exc: BaseException) -> None:
        logger.critical("side task %s failed, stopping the gateway", name, exc_info=exc,
                        extra={"action": "side_task_failed"})
        if self.failed is None:
            self.failed = exc
            self.stopping = True
            self.on_fatal(exc)

    async def wait_listening(self, timeout: float = STARTUP_LISTEN_TIMEOUT) -> None:
        """Waits for the first LISTEN, so a fresh gateway's /healthz is green."""
        if self.listener is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await self.listener.ever_connected.wait()
        except TimeoutError:
            logger.warning("no LISTEN connection after %ss; still trying", timeout,
                           extra={"action": "listener_slow_start"})

    async def close_sockets(self, code: int = CLOSE_GOING_AWAY,
                            reason: str = "gateway shutting down") -> None:
        """Stops accepting sockets and closes the open ones, waiting up to the close timeout."""
        self.stopping = True
        if not self.connections:
            return
        self._idle = asyncio.Event()
        for connection in list(self.connections):
            self.fanout.close(connection.client, code, reason)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.close_timeout + 1.0):
                await self._idle.wait()

    async def stop(self) -> None:
        """Closes the sockets, then stops the side tasks (the TaskGroup awaits them)."""
        await self.close_sockets()
        if self.worker is not None:
            self.worker.stop()
        for task in self._tasks:
            if task.get_name() != "pgflow-worker":
                task.cancel()

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()
            self.store = None


async def _sync_flows(store: Store, flows: list[Flow]) -> None:
    """``define_flow`` for each loaded flow: the worker's ``sync_flows`` when there is one."""
    if not flows:
        return
    if importlib.util.find_spec("pgflow.worker.worker") is not None:
        sync = getattr(importlib.import_module("pgflow.worker.worker"), "sync_flows", None)
        if sync is not None:
            await sync(store, flows)
            return
    for flow in flows:
        await store.define_flow(flow.definition())


def _make_worker(database_url: str, flows: list[Flow], options: Any) -> Any:
    if importlib.util.find_spec("pgflow.worker.worker") is None:
        raise ConfigurationError("--with-worker needs pgflow.worker.worker, which is not installed")
    worker_class = importlib.import_module("pgflow.worker.worker").Worker
    return worker_class(database_url, flows, **dict(options))


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
    """Counts HTTP answers by status, and hands ``/realtime`` sockets straight to their endpoint
    (past Starlette's per-message exception wrapper: see realtime.py)."""

    def __init__(self, app: ASGIApp, gateway: Gateway, realtime: RealtimeEndpoint) -> None:
        self.app = app
        self.gateway = gateway
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
            origins = self.gateway.auth.origins
            if origins.hosts is not None and not origins.allows_host(_header(scope, b"host")):
                await _FORBIDDEN_HOST(scope, receive, counting_send)
            else:
                await self.app(scope, receive, counting_send)
        finally:
            self.gateway.metrics.http_requests[status] += 1


def gateway_of(app: Starlette) -> Gateway:
    gateway = getattr(app.state, "gateway", None)
    if not isinstance(gateway, Gateway):
        raise RuntimeError(f"{app!r} was not made by gateway.app.create_app")
    return gateway


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """The gateway's lifespan; a parent app that mounts the gateway enters it in its own."""
    gateway = gateway_of(app)
    await gateway.start()
    try:
        async with asyncio.TaskGroup() as tasks:
            gateway.spawn(tasks)
            try:
                await gateway.wait_listening()
                yield
            finally:
                await gateway.stop()
    finally:
        await gateway.close()


def create_app(
    database_url: str,
    *,
    flows: Iterable[Flow] = (),
    config: GatewayConfig | None = None,
    with_worker: bool = False,
) -> Starlette:
    """The gateway as an ASGI app: HTTP API, ``/realtime``, ``/client.js``, ``/``.

    Args:
        database_url: the PostgreSQL the engine lives in (migrated on startup).
        flows: flows to define on startup; their ``public``, ``description`` and
            ``example_input`` show in ``/flows``.
        config: limits and access; the default is a public gateway.
        with_worker: also run a ``pgflow.worker.worker.Worker`` for ``flows`` in the lifespan.
    """
    config = config or GatewayConfig()
    gateway = Gateway(database_url, flows, config, with_worker=with_worker)
    realtime = RealtimeEndpoint(gateway)
    middleware = [Middleware(GatewayMiddleware, gateway=gateway, realtime=realtime)]
    if config.cors_origins:
        middleware.append(Middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "If-None-Match"],
            expose_headers=["ETag", "Location"],
            max_age=600,
        ))
    app = Starlette(
        routes=[*http_routes(gateway), WebSocketRoute("/realtime", realtime)],
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_exception, Exception: internal_error},
    )
    app.state.gateway = gateway
    return app


# -- serving ------------------------------------------------------------------------------


class _RedactTokens(logging.Filter):
    """uvicorn logs websocket paths with their query: keep ``?token=`` out of the logs."""

    _pattern = re.compile(r"(token=)[^&\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "token=" in message:
            record.msg = self._pattern.sub(r"\1[redacted]", message)
            record.args = ()
        return True


class _UvicornServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, gateway: Gateway | None,
                 install_signal_handlers: bool) -> None:
        super().__init__(config)
        self.gateway = gateway
        self.install_signal_handlers = install_signal_handlers
        self.ready = asyncio.Event()
        self.startup_failed = False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
        except SystemExit:  # uvicorn's answer to a failed lifespan startup
            self.startup_failed = True
            self.should_exit = True
        finally:
            self.ready.set()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Stop accepting, close our sockets with 1001 (uvicorn would send 1012), then uvicorn's
        # own shutdown and the lifespan's.
        for server in self.servers:
            server.close()
        if self.gateway is not None:
            await self.gateway.close_sockets()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # Ours: uvicorn's re-raises SIGTERM after shutdown, which skips the embedded
        # server's cleanup in `pgflow serve`.
        if not self.install_signal_handlers:
            yield
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: int) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            logger.info("signal %s: shutting down", signal.Signals(sig).name,
                        extra={"action": "signal"})
            self.should_exit = True


class GatewayServer:
    """An ASGI app under uvicorn, bound before it starts (port 0 picks a free port).

    ``pgflow serve`` uses it, and so do the tests (in-process, without signal handlers).
    """

    def __init__(
        self,
        app: Starlette,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ws: str | None = None,
        log_level: str = "warning",
        access_log: bool = False,
        install_signal_handlers: bool = False,
    ) -> None:
        """``ws``: None serves ``/realtime`` with the gateway's own protocol
        (gateway/websocket.py) when ``app`` is a gateway, else with uvicorn's
        ``websockets-sansio`` through ASGI; or a uvicorn ``ws`` implementation by name."""
        self.gateway: Gateway | None = getattr(app.state, "gateway", None)
        frame_limit = self.gateway.config.max_frame_bytes if self.gateway else 0
        # Above our own limit, so that the endpoint sees an oversized frame and can say why it
        # closes (too_large, 1009); the server closes beyond this one without a word.
        max_message_bytes = max(MIN_SERVER_FRAME_LIMIT, 4 * frame_limit)
        ws_protocol: Any = ws or DEFAULT_WS_IMPLEMENTATION
        if ws is None and self.gateway is not None:
            ws_protocol = RealtimeServer(self.gateway, max_message_bytes=max_message_bytes)
        # The connection cap and request deadline (gateway/_connections.py).
        limits = self.gateway.config if self.gateway is not None else GatewayConfig()
        with_worker = self.gateway is not None and self.gateway.with_worker
        self.admission = ConnectionAdmission.for_process(
            limits.max_connections, request_timeout=limits.request_timeout,
            database_connections=limits.pool_size + 1 + WORKER_DESCRIPTORS * with_worker,
        )
        self.config = uvicorn.Config(
            app,
            host=host,
            port=port,
            http=self.admission.protocol_class(AutoHTTPProtocol),
            # asyncio accepts up to `backlog` connections per loop iteration before admitting
            # any: kept within the admission's headroom (start() lengthens the listen queue).
            backlog=self.admission.budget.accept_burst,
            ws=ws_protocol,
            ws_max_size=max_message_bytes,
            # Through ASGI, compression would deflate every frame once per socket: the opposite
            # of fan-out. The gateway's own protocol negotiates it and compresses once.
            ws_per_message_deflate=False,
            lifespan="on",
            log_config=None,
            log_level=log_level,
            access_log=access_log,
        )
        self.server = _UvicornServer(self.config, self.gateway, install_signal_handlers)
        self.admission.track(self.server.server_state.connections)
        if self.gateway is not None:
            self.gateway.socket_limit = sockets_within(self.admission.limit, limits.max_sockets)
            self.admission.register_metrics(self.gateway.metrics)
            self.gateway.on_fatal = lambda exc: setattr(self.server, "should_exit", True)
        self.url = ""
        self._task: asyncio.Task[None] | None = None
        for name in ("uvicorn.error", "uvicorn.access"):
            logging.getLogger(name).addFilter(_RedactTokens())

    async def start(self) -> str:
        """Starts serving; returns the bound URL once the app's lifespan has started."""
        sock = _bind_socket(self.config.host, self.config.port)
        host, port = sock.getsockname()[:2]
        if self.gateway is not None:  # its own origins, unless --public-origin says otherwise
            self.gateway.auth.origins.listening_on(self.config.host, port)
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}"
        self.admission.install(asyncio.get_running_loop())
        self._task = asyncio.create_task(self.server.serve([sock]), name="pgflow-uvicorn")
        self._task.add_done_callback(lambda _: self.admission.close())
        ready = asyncio.ensure_future(self.server.ready.wait())
        await asyncio.wait((ready, self._task), return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if self.server.started:
            sock.listen(LISTEN_BACKLOG)  # on a listening socket: only the queue's length changes
        if self._task.done() or self.server.startup_failed:
            await self._task
            raise ConfigurationError("the gateway failed to start (see the log above)")
        # What startup made (modules, flows, pools) lives as long as the process: out of the
        # collector's full passes, which otherwise rescan it with every socket's objects.
        gc.freeze()
        return self.url

    async def wait(self) -> None:
        """Serves until a signal, ``stop()`` or a fatal error."""
        if self._task is not None:
            await self._task

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.wait()


def _bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket for uvicorn, bound before it starts (so port 0 can be reported).

    Made from getaddrinfo's answer, proto included: asyncio turns Nagle off (TCP_NODELAY) only
    on sockets whose proto is IPPROTO_TCP, and uvicorn's own ``Config.bind_socket`` leaves it
    0, which costs every small response and frame a 40 ms delayed-ACK stall (measured).
    """
    if not 0 <= port <= 65535:  # getaddrinfo would take 99999 as 99999 % 65536
        raise ConfigurationError(f"cannot listen on port {port}: ports are 1-65535 (0: any)")
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc}") from exc
    sock.set_inheritable(True)
    return sock


def serve_command(args: argparse.Namespace) -> int:
    """``pgflow serve``: the gateway under uvicorn, until SIGINT/SIGTERM."""
    from pgflow.db.local_server import database_url

    flows = load_flows(args.flows)
    config = GatewayConfig.from_args(args)
    if args.with_worker:
        if not flows:
            raise ConfigurationError("--with-worker needs --flows")
        config = config.with_changes(worker_options={
            "concurrency": args.concurrency,
            "batch_size": args.batch_size,
            "lease_seconds": args.lease,
            "poll_interval": args.poll_interval,
            "shutdown_grace": args.shutdown_grace,
            "max_stuck_threads": args.max_stuck_threads,
        })
    with database_url(args.database_url, args.data_dir) as url:
        return asyncio.run(_serve(url, flows, config, args))


async def _serve(url: str, flows: list[Flow], config: GatewayConfig,
                 args: argparse.Namespace) -> int:
    app = create_app(url, flows=flows, config=config, with_worker=args.with_worker)
    gateway = gateway_of(app)
    await gateway.start()  # migrations and flow errors end here, with a clear message
    server = GatewayServer(
        app, host=args.host, port=args.port, log_level=args.log_level,
        access_log=os.environ.get("PGFLOW_ACCESS_LOG", "") == "1",
        install_signal_handlers=True,
    )
    bound = await server.start()
    print(f"pgflow gateway listening on {bound}", flush=True)
    await server.wait()
    return 1 if gateway.failed is not None else 0
