"""One gateway's runtime: what ``create_app`` composes and its lifespan starts and stops.

The runtime owns everything long-lived: the store (the pool), the LISTEN connection, the relay,
the registry of open sockets, and the side tasks the application was given (the worker, when
``pgflow serve --with-worker`` composes one), as named tasks of the lifespan's
``asyncio.TaskGroup``. A side task that stops is a fatal error: it is logged and the service is
stopped (``on_fatal``). Shutdown order: stop accepting sockets, close them with 1001, ask the side
tasks that can finish to finish and cancel the others, close the pool.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.auth import Authenticator
from gateway.config import GatewayConfig
from gateway.fanout import Fanout
from gateway.metrics import Metrics
from gateway.relay import APPLICATION_NAME as LISTENER_NAME
from gateway.relay import READ_PAGE, Relay
from gateway.sockets import Sockets
from gateway.wire import CLOSE_GOING_AWAY
from pgflow.db.listen import Listener
from pgflow.db.migrate import migrate_url
from pgflow.db.notifications import NOTIFY_CHANNEL
from pgflow.db.store import Store
from pgflow.errors import ConfigurationError, DatabaseUnavailableError
from pgflow.flows import Flow

logger = logging.getLogger(__name__)

STARTUP_LISTEN_TIMEOUT = 10.0  # seconds the lifespan waits for the first LISTEN

FlowSync = Callable[[Store, Sequence[Flow]], Awaitable[object]]  # what it answers is unused


@dataclass(frozen=True)
class SideTask:
    """A long-lived job the gateway's lifespan runs beside its own, e.g. a worker.

    ``stop`` asks it to finish (the lifespan then waits for it); without one it is cancelled.
    ``descriptors``: the file descriptors it holds (its own pool, its LISTEN connection),
    kept out of the gateway's connection budget.
    """

    name: str
    run: Callable[[], Coroutine[Any, Any, None]]
    stop: Callable[[], None] | None = None
    descriptors: int = 0


async def define_flows(store: Store, flows: Sequence[Flow]) -> None:
    """The default flow sync: ``define_flow`` for each flow."""
    for flow in flows:
        await store.define_flow(flow.definition())


def _terminate_process(exc: BaseException) -> None:
    # Whatever server runs us handles SIGTERM as a graceful shutdown.
    signal.raise_signal(signal.SIGTERM)


class GatewayRuntime:
    """The gateway's long-lived parts and their lifecycle (``app.state.pgflow_gateway``)."""

    def __init__(self, database_url: str, flows: Iterable[Flow], config: GatewayConfig, *,
                 side_tasks: Sequence[SideTask] = (),
                 sync_flows: FlowSync = define_flows) -> None:
        self.database_url = database_url
        # LISTEN and the migrations need a session: never through PgBouncer (docs/gateway.md)
        self.listen_database_url = config.listen_database_url or database_url
        self.config = config
        self.flows: dict[str, Flow] = {}
        for flow in flows:
            if flow.slug in self.flows and self.flows[flow.slug] is not flow:
                raise ConfigurationError(f"two flows are named {flow.slug!r}")
            self.flows[flow.slug] = flow
        self.side_tasks = list(side_tasks)
        self.sync_flows = sync_flows
        self.metrics = Metrics()
        self.fanout = Fanout(max_frames=config.socket_buffer_frames,
                             max_bytes=config.socket_buffer_bytes)
        self.auth = Authenticator(config, {s: f.public for s, f in self.flows.items()})
        self.store: Store | None = None
        self.listener: Listener | None = None
        self.stopping = False
        self.failed: BaseException | None = None
        self.on_fatal: Callable[[BaseException], None] = _terminate_process
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        # A log read never brings more than an outbox takes before it is flow-controlled.
        self.relay = Relay(self.fanout, self.require_store, self.metrics, self._queue,
                           page=min(READ_PAGE, self.fanout.soft_frames))
        self.sockets = Sockets(self.fanout, self.auth, self.relay, self.metrics, config,
                               serving=lambda: not self.stopping and self.store is not None)
        self._tasks: list[asyncio.Task[None]] = []
        self._observe()

    def _observe(self) -> None:
        fanout = self.fanout
        observe = self.metrics.observe
        observe("pgflow_sockets_open", "gauge", "websockets open", lambda: len(fanout.clients))
        observe("pgflow_subscriptions", "gauge", "run subscriptions of open websockets",
                lambda: fanout.subscription_count)
        observe("pgflow_listener_connected", "gauge", "1 while LISTEN is up, else 0",
                lambda: int(self.listener is not None and self.listener.connected))
        observe("pgflow_listener_reconnects_total", "counter",
                "LISTEN connections re-established",
                lambda: self.listener.reconnects if self.listener is not None else 0)
        observe("pgflow_slow_sockets_dropped_total", "counter",
                "sockets closed with 1013: outbox overflowed or stalled",
                lambda: fanout.dropped_slow)
        observe("pgflow_frames_queued_total", "counter", "frames put in socket outboxes",
                lambda: fanout.frames_queued)

    @property
    def side_task_descriptors(self) -> int:
        return sum(task.descriptors for task in self.side_tasks)

    def require_store(self) -> Store:
        if self.store is None:
            raise DatabaseUnavailableError("the gateway is not started")
        return self.store

    def unhealthy(self) -> str | None:
        """Why ``/healthz`` is red, or None."""
        if self.stopping:
            return "stopping"
        if self.listener is None or not self.listener.connected:
            return "the LISTEN connection is down"
        return None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Migrates, opens the pool, defines the loaded flows. Idempotent."""
        if self.store is not None:
            return
        if self.config.migrate:
            await migrate_url(self.listen_database_url)
        store = await Store.open(self.database_url, max_size=self.config.pool_size,
                                 statement_cache=not self.config.pgbouncer)
        try:
            if self.flows:
                await self.sync_flows(store, list(self.flows.values()))
        except BaseException:
            await store.close()
            raise
        self.store = store

    def spawn(self, tasks: asyncio.TaskGroup) -> None:
        """Starts the long-lived tasks in the lifespan's TaskGroup."""
        self.require_store()
        self.listener = Listener(
            self.listen_database_url, NOTIFY_CHANNEL, self._queue, application_name=LISTENER_NAME,
            health_interval=self.config.listener_health_interval,
            health_timeout=self.config.listener_health_timeout,
        )
        runs: list[tuple[str, Coroutine[Any, Any, None]]] = [
            ("pgflow-listener", self.listener.run()),
            ("pgflow-relay", self.relay.consume()),
            ("pgflow-log-reader", self.relay.read_loop()),
            ("pgflow-replay-reader", self.relay.replay_loop()),
            ("pgflow-socket-sweeper", self.sockets.sweep()),
        ]
        runs.extend((task.name, task.run()) for task in self.side_tasks)
        self._tasks = [tasks.create_task(self._supervise(name, coro), name=name)
                       for name, coro in runs]

    async def _supervise(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
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
        await self.sockets.close_all(code, reason)

    async def stop(self) -> None:
        """Closes the sockets, then stops the side tasks (the TaskGroup awaits them)."""
        await self.close_sockets()
        finishing = set()
        for side_task in self.side_tasks:
            if side_task.stop is not None:
                side_task.stop()
                finishing.add(side_task.name)
        for task in self._tasks:
            if task.get_name() not in finishing:
                task.cancel()

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()
            self.store = None
