"""Serving under uvicorn: ``GatewayServer`` binds, starts and stops an ASGI app.

``pgflow serve`` and ``pgflow demo`` use it, and so do the tests (in-process, without signal
handlers). For a gateway app it serves ``/realtime`` with the native transport and sizes the
connection admission (gateway/connections.py); any other ASGI app (a parent that mounts the
gateway) is served through uvicorn's own websocket implementation. HTTP/1.1 is parsed by
httptools (a dependency, which uvicorn picks when it is installed): about a sixth less gateway
CPU per interactive run than uvicorn's pure-Python h11 (BENCHMARKS.md, many users at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
import signal
import socket
from collections.abc import Generator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from gateway.app import find_runtime
from gateway.config import GatewayConfig
from gateway.connections import LISTEN_BACKLOG, ConnectionAdmission, sockets_within
from gateway.native_socket import NativeSocketServer
from gateway.runtime import GatewayRuntime
from pgflow.errors import ConfigurationError

logger = logging.getLogger(__name__)

DEFAULT_WS_IMPLEMENTATION = "websockets-sansio"  # uvicorn's; docs/design/fanout.md
MIN_SERVER_FRAME_LIMIT = 1024 * 1024  # uvicorn's own frame limit, above ours (see GatewayServer)


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
    def __init__(self, config: uvicorn.Config, runtime: GatewayRuntime | None,
                 install_signal_handlers: bool) -> None:
        super().__init__(config)
        self.runtime = runtime
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
        if self.runtime is not None:
            await self.runtime.close_sockets()
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
        """``ws``: None serves ``/realtime`` with the native transport
        (gateway/native_socket.py) when ``app`` is a gateway, else with uvicorn's
        ``websockets-sansio`` through ASGI; or a uvicorn ``ws`` implementation by name."""
        runtime = self.runtime = find_runtime(app)
        frame_limit = runtime.config.max_frame_bytes if runtime is not None else 0
        # Above our own limit, so that the endpoint sees an oversized frame and can say why it
        # closes (too_large, 1009); the server closes beyond this one without a word.
        max_message_bytes = max(MIN_SERVER_FRAME_LIMIT, 4 * frame_limit)
        ws_protocol: Any = ws or DEFAULT_WS_IMPLEMENTATION
        if ws is None and runtime is not None:
            ws_protocol = NativeSocketServer(runtime.sockets, runtime.metrics, runtime.config,
                                             max_message_bytes=max_message_bytes)
        # The connection cap and request deadline (gateway/connections.py).
        limits = runtime.config if runtime is not None else GatewayConfig()
        side_descriptors = runtime.side_task_descriptors if runtime is not None else 0
        self.admission = ConnectionAdmission.for_process(
            limits.max_connections, request_timeout=limits.request_timeout,
            database_connections=limits.pool_size + 1 + side_descriptors,
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
            # of fan-out. The native transport negotiates it and compresses once.
            ws_per_message_deflate=False,
            lifespan="on",
            log_config=None,
            log_level=log_level,
            access_log=access_log,
        )
        self.server = _UvicornServer(self.config, runtime, install_signal_handlers)
        self.admission.track(self.server.server_state.connections)
        if runtime is not None:
            runtime.sockets.limit = sockets_within(self.admission.limit, limits.max_sockets)
            self.admission.register_metrics(runtime.metrics)
            runtime.on_fatal = lambda exc: setattr(self.server, "should_exit", True)
        self.url = ""
        self._task: asyncio.Task[None] | None = None
        for name in ("uvicorn.error", "uvicorn.access"):
            logging.getLogger(name).addFilter(_RedactTokens())

    async def start(self) -> str:
        """Starts serving; returns the bound URL once the app's lifespan has started."""
        sock = _bind_socket(self.config.host, self.config.port)
        host, port = sock.getsockname()[:2]
        if self.runtime is not None:  # its own origins, unless --public-origin says otherwise
            self.runtime.auth.origins.listening_on(self.config.host, port)
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
