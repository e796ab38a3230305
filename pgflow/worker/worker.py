"""The worker: claims ready tasks, runs their handlers, reports the results in batches.

    claim loop ──claim_tasks(n = free slots)──▶ handlers (at most `concurrency` at once)
        ▲  woken by NOTIFY pgflow_tasks, a freed slot, a retry coming due, or poll_interval
        │                                           │ results queue up in memory
    listener (its own connection)            reporter ──report_steps──▶ one transaction per round
    heartbeat: one extend_leases call for every running handler, every lease/3

Shutdown (``stop()``, SIGTERM): stop claiming, give running handlers ``shutdown_grace`` to
finish, report their results, then release whatever is still leased so another worker takes it
at once. A second ``stop()`` aborts: handlers are cancelled and their tasks released.

A database error never stops the worker: each loop logs it, backs off (capped, jittered) and
carries on; finished results wait in memory until they can be reported (``_reporter.py``). A
stale report (the lease ran out meanwhile) is harmless: the engine ignores it and the step runs
again. The heartbeat extends only running handlers' leases, never a finished result's: a result
that cannot be reported delays its step by at most one lease.

A plain handler stuck in its thread past its timeout gives its slot back; when
``max_stuck_threads`` of them are stuck, the worker drains and ``run()`` raises
``StuckThreadsError``, so that its supervisor starts a fresh process.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import socket
import threading
import uuid
from collections.abc import Collection, Sequence
from typing import Any

from pgflow.db.store import (
    MAX_LEASE,
    MIN_LEASE,
    Completion,
    Failure,
    ListenConnection,
    Store,
    Task,
)
from pgflow.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    FlowShapeConflictError,
    PGFlowError,
)
from pgflow.flows import Flow
from pgflow.worker._attempts import Attempts, Runner, describe_error, runners
from pgflow.worker._reporter import REPORTERS, Reporter, Result
from pgflow.worker._retry import DB_CALL_TIMEOUT, Retry, jitter

logger = logging.getLogger(__name__)

TASKS_CHANNEL = "pgflow_tasks"
DEFAULT_CONCURRENCY = 10
DEFAULT_LEASE = 30.0  # seconds
DEFAULT_POLL_INTERVAL = 1.0  # seconds
DEFAULT_SHUTDOWN_GRACE = 30.0  # seconds
POOL_SIZE = 4  # claim, report, heartbeat, and one for shutdown
LISTEN_HEALTH_INTERVAL = 10.0  # seconds of silence before the listener pings its connection
FLUSH_TIMEOUT = 10.0  # seconds, on shutdown, to report the last results and release the rest
ABORT_TIMEOUT = 2.0  # seconds for the same when aborting
RETRY_WAKE_MARGIN = 0.01  # seconds after a retry's backoff before claiming it
STUCK_EXIT_STATUS = 3  # `pgflow worker`'s exit status after too many stuck handler threads

_Key = tuple[uuid.UUID, str, int]  # run_id, step_slug, attempt


async def sync_flows(store: Store, flows: Sequence[Flow]) -> None:
    """Defines each flow's shape in the database, or checks that it has not changed.

    Raises:
        FlowShapeConflictError: a slug already exists with another shape; the message says
            what differs and to give the new shape a new slug (``name_v2``).
        InvalidFlowError: the database refused a shape.
    """
    for flow in flows:
        try:
            await store.define_flow(flow.definition())
        except FlowShapeConflictError as exc:
            message = str(exc)
            if "new slug" not in message:
                message += f"; give the new shape a new slug, e.g. '{flow.slug}_v2'"
            raise FlowShapeConflictError(message) from exc
        logger.debug("flow %s defined", flow.slug, extra={"action": "flow_sync"})


class StuckThreadsError(PGFlowError):
    """Too many plain handlers are stuck in their threads past their timeout: the worker
    drained and stopped, so that its supervisor can start a fresh process."""


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Worker:
    """Runs the handlers of ``flows``: claims their ready tasks, runs them, reports back.

    ``run()`` opens its own pool and LISTEN connection and works until ``stop()``. Call
    ``stop()`` from the event loop's thread (another thread is fine too: it is handed over).
    """

    def __init__(
        self,
        database_url: str,
        flows: Sequence[Flow],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        batch_size: int | None = None,
        lease_seconds: float = DEFAULT_LEASE,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
        worker_id: str | None = None,
        max_stuck_threads: int | None = None,
    ) -> None:
        if not flows:
            raise ConfigurationError("a worker needs at least one flow")
        if len({f.slug for f in flows}) != len(flows):
            raise ConfigurationError("two of the worker's flows share a slug")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(f"concurrency must be at least 1, not {concurrency!r}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ConfigurationError(f"batch size must be at least 1, not {batch_size!r}")
        if not MIN_LEASE <= lease_seconds <= MAX_LEASE:
            raise ConfigurationError(f"the lease must be from {MIN_LEASE:g} to {MAX_LEASE:g} "
                                     f"seconds, not {lease_seconds!r}")
        if not poll_interval > 0:
            raise ConfigurationError(
                f"the poll interval must be positive seconds, not {poll_interval!r}"
            )
        if not shutdown_grace >= 0:
            raise ConfigurationError(
                f"the shutdown grace must be seconds >= 0, not {shutdown_grace!r}"
            )
        if max_stuck_threads is not None and (
            not isinstance(max_stuck_threads, int) or max_stuck_threads < 1
        ):
            raise ConfigurationError(
                f"max stuck threads must be at least 1, not {max_stuck_threads!r}"
            )
        self.database_url = database_url
        self.flows = list(flows)
        self.concurrency = concurrency
        self.batch_size = batch_size or concurrency
        self.lease_seconds = float(lease_seconds)
        self.poll_interval = float(poll_interval)
        self.shutdown_grace = float(shutdown_grace)
        self.worker_id = worker_id or default_worker_id()
        # Default: as many as slots, the most the worker could have had before slots were freed.
        self.max_stuck_threads = max_stuck_threads or concurrency
        self.started = asyncio.Event()

        self._slugs = frozenset(f.slug for f in self.flows)
        self._runners = runners(self.flows)
        self._attempts = Attempts(
            self.worker_id, concurrency, self._slot_freed_by_thread,
            max_stuck=self.max_stuck_threads, on_stuck=self._on_stuck,
        )
        self._reporter = Reporter(self.worker_id, self._wake_for_retry)
        self._too_many_stuck = False

        self._stopping = asyncio.Event()
        self._aborting = asyncio.Event()
        self._wakeup = asyncio.Event()  # a task may be ready: claim now
        self._slot_freed = asyncio.Event()
        self._running: dict[_Key, tuple[Task, asyncio.Task[None]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._ran = False
        self._finished = False

    # -- public ------------------------------------------------------------------------------

    @property
    def aborted(self) -> bool:
        return self._aborting.is_set()

    @property
    def stuck_threads(self) -> int:
        """Plain handlers still running in a thread after their timeout or the shutdown."""
        return self._attempts.stuck

    @property
    def stuck_threads_total(self) -> int:
        """Plain handlers that ever outlived their attempt in their thread."""
        return self._attempts.stuck_total

    @property
    def unreported(self) -> int:
        """Finished attempts not reported yet."""
        return len(self._reporter)

    @property
    def refused_results(self) -> int:
        """Results the database refused: reported as failures instead, or dropped."""
        return self._reporter.refused

    def health(self) -> dict[str, Any]:
        """What a supervisor or a health page wants to know, as JSON-ready values."""
        return {
            "worker_id": self.worker_id,
            "running": len(self._running),
            "stuck_threads": self.stuck_threads,
            "max_stuck_threads": self.max_stuck_threads,
            "unreported": self.unreported,
            "stopping": self._stopping.is_set(),
        }

    def stop(self) -> None:
        """Begins a graceful shutdown; a second call while shutting down aborts it."""
        if (
            self._loop is not None
            and self._loop_thread != threading.get_ident()
            and not self._loop.is_closed()
        ):
            self._loop.call_soon_threadsafe(self.stop)
            return
        if not self._stopping.is_set():
            logger.info("worker stopping", extra={"action": "worker_stop",
                                                  "worker_id": self.worker_id})
            self._stopping.set()
            # whatever the claim loop waits on, it must notice
            self._wakeup.set()
            self._slot_freed.set()
            return
        if self._finished or self._aborting.is_set():
            return
        logger.warning("worker aborting: cancelling running handlers",
                       extra={"action": "worker_abort", "worker_id": self.worker_id})
        self._aborting.set()

    async def run(self) -> None:
        """Works until ``stop()``; returns after the shutdown.

        Raises:
            FlowShapeConflictError, InvalidFlowError: a flow cannot be defined as declared.
            ConfigurationError: the database refuses the connection (bad URL, credentials).
        """
        if self._ran:
            raise RuntimeError(f"worker {self.worker_id!r} has already run")
        self._ran = True
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        store = await self._open_store()
        if store is None:
            self._finished = True
            return
        try:
            if await self._sync_flows(store):
                await self._work(store)
        finally:
            self._finished = True
            for _, handler in self._running.values():
                handler.cancel()
            self._attempts.close()
            await self._close_store(store)
            logger.info("worker stopped", extra={"action": "worker_stopped",
                                                 "worker_id": self.worker_id})
        if self._too_many_stuck:
            raise StuckThreadsError(
                f"worker {self.worker_id} stopped: {self.stuck_threads} plain handler(s) stuck "
                f"in their threads past their timeout (limit {self.max_stuck_threads})"
            )

    # -- start-up and shutdown ---------------------------------------------------------------

    async def _open_store(self) -> Store | None:
        retry = Retry("connecting to the database")
        while not self._stopping.is_set():
            try:
                store = await Store.open(self.database_url, min_size=1, max_size=POOL_SIZE)
            except DatabaseUnavailableError as exc:
                await self._wait(self._stopping, retry.failed(exc))
                continue
            except (OSError, ValueError) as exc:
                raise ConfigurationError(f"cannot use the database: {exc}") from exc
            except Exception as exc:  # asyncpg refusals: bad credentials, unknown database
                raise ConfigurationError(
                    f"the database refused the connection: {describe_error(exc)}"
                ) from exc
            retry.succeeded()
            return store
        return None

    async def _sync_flows(self, store: Store) -> bool:
        retry = Retry("defining flows")
        while not self._stopping.is_set():
            try:
                async with asyncio.timeout(DB_CALL_TIMEOUT):
                    await sync_flows(store, self.flows)
            except (DatabaseUnavailableError, TimeoutError) as exc:
                await self._wait(self._stopping, retry.failed(exc))
                continue
            retry.succeeded()
            return True
        return False

    async def _close_store(self, store: Store) -> None:
        try:
            async with asyncio.timeout(ABORT_TIMEOUT):
                await store.close()
        except Exception:
            store.terminate()

    async def _work(self, store: Store) -> None:
        async with asyncio.TaskGroup() as group:
            listener = group.create_task(self._listen_loop(), name="pgflow-worker-listen")
            heartbeat = group.create_task(
                self._heartbeat_loop(store), name="pgflow-worker-heartbeat"
            )
            reporters = [
                group.create_task(self._reporter.run(store, Retry("reporting results")),
                                  name=f"pgflow-worker-report-{n}")
                for n in range(REPORTERS)
            ]
            try:
                logger.info(
                    "worker started: %s, concurrency %d", ", ".join(sorted(self._slugs)),
                    self.concurrency,
                    extra={"action": "worker_start", "worker_id": self.worker_id,
                           "flows": sorted(self._slugs)},
                )
                self.started.set()
                await self._claim_loop(store)
                listener.cancel()  # nothing more is claimed: hints are useless now
                await self._drain()
                await self._flush(reporters)
                await self._release(store)
            except asyncio.CancelledError:
                # Cancelled from outside (the embedding app shuts down): hand back what we hold.
                self._aborting.set()
                for _, handler in self._running.values():
                    handler.cancel()
                await self._release(store, final_report=True)
                raise
            finally:
                for side in (listener, heartbeat, *reporters):
                    side.cancel()

    async def _drain(self) -> None:
        """Lets running handlers finish within the grace; cancels the rest (their tasks are
        released, not failed: they did nothing wrong)."""
        handlers = [handler for _, handler in self._running.values()]
        if not handlers:
            return
        if not self._aborting.is_set():
            logger.info(
                "waiting up to %.1f s for %d running handler(s)", self.shutdown_grace,
                len(handlers), extra={"action": "worker_drain", "count": len(handlers)},
            )
            await self._phase(handlers, self.shutdown_grace, on_abort=0.0)
        handlers = [handler for _, handler in self._running.values()]
        if handlers:
            logger.warning(
                "cancelling %d handler(s) still running; their tasks go back to the queue",
                len(handlers), extra={"action": "worker_cancel", "count": len(handlers)},
            )
            for handler in handlers:
                handler.cancel()
            # A handler that swallows its cancellation is not waited for forever.
            await asyncio.wait(handlers, timeout=ABORT_TIMEOUT)
            self._running.clear()

    async def _flush(self, reporters: list[asyncio.Task[None]]) -> None:
        self._reporter.flush()
        await self._phase(reporters, FLUSH_TIMEOUT, on_abort=ABORT_TIMEOUT)
        if not all(r.done() for r in reporters):
            for reporter in reporters:
                reporter.cancel()
            await asyncio.wait(reporters)
            lost = len(self._reporter)
            logger.warning(
                "could not report %d result(s) before stopping; those steps will run again",
                lost, extra={"action": "report_lost", "count": lost},
            )

    async def _release(self, store: Store, *, final_report: bool = False) -> None:
        """Gives back every task this worker still holds, so that another takes it at once."""
        timeout = ABORT_TIMEOUT if self._aborting.is_set() else FLUSH_TIMEOUT
        try:
            async with asyncio.timeout(timeout):
                if final_report and len(self._reporter):
                    await self._reporter.report_all(store)
                released = await store.release_tasks(self.worker_id)
        except Exception as exc:
            logger.warning(
                "could not release tasks, they run again when their lease ends: %s",
                describe_error(exc), extra={"action": "release_failed"},
            )
            return
        if released:
            logger.info("released %d task(s)", released,
                        extra={"action": "release", "count": released})

    async def _phase(
        self, tasks: Collection[asyncio.Future[Any]], timeout: float, *, on_abort: float
    ) -> None:
        """Waits for ``tasks`` for up to ``timeout`` seconds, cut to ``on_abort`` by an abort."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (on_abort if self._aborting.is_set() else timeout)
        abort = asyncio.ensure_future(self._aborting.wait())
        try:
            while True:
                pending = {t for t in tasks if not t.done()}
                remaining = deadline - loop.time()
                if not pending or remaining <= 0:
                    return
                # once aborting, a finished `abort` would make every wait return at once
                waits = pending if abort.done() else pending | {abort}
                await asyncio.wait(waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                if abort.done():
                    deadline = min(deadline, loop.time() + on_abort)
        finally:
            abort.cancel()

    # -- claiming ------------------------------------------------------------------------------

    def _free_slots(self) -> int:
        return self.concurrency - len(self._running)

    async def _claim_loop(self, store: Store) -> None:
        slugs = sorted(self._slugs)
        retry = Retry("claiming tasks")
        claim_now = True  # at start, and after a full batch: more may be waiting
        while not self._stopping.is_set():
            free = self._free_slots()
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            if not claim_now:
                # jittered, so that workers started together do not poll together
                await self._wait(self._wakeup, self.poll_interval * jitter.uniform(0.9, 1.1))
                if self._stopping.is_set():
                    return
            self._wakeup.clear()  # before the claim: a hint arriving during it is kept
            wanted = min(free, self.batch_size)
            try:
                async with asyncio.timeout(DB_CALL_TIMEOUT):
                    tasks = await store.claim_tasks(
                        self.worker_id, wanted, flow_slugs=slugs,
                        lease_seconds=self.lease_seconds,
                    )
            except Exception as exc:
                await self._wait(self._stopping, retry.failed(exc))
                claim_now = True
                continue
            retry.succeeded()
            for task in tasks:
                self._start(task)
            claim_now = len(tasks) >= wanted

    def _start(self, task: Task) -> None:
        key = (task.run_id, task.step_slug, task.attempt)
        runner = self._runners.get((task.flow_slug, task.step_slug))
        self._running[key] = (task, asyncio.create_task(self._execute(task, runner, key)))

    async def _wait(self, event: asyncio.Event, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            pass

    def _on_notify(self, payload: str) -> None:
        if payload in self._slugs:
            self._wakeup.set()

    async def _listen_loop(self) -> None:
        retry = Retry("listening for tasks")
        while True:
            try:
                listening = await ListenConnection.open(
                    self.database_url, TASKS_CHANNEL, self._on_notify,
                    name=f"pgflow worker {self.worker_id}"[:63],
                )
            except Exception as exc:
                await asyncio.sleep(retry.failed(exc))
                continue
            retry.succeeded()
            self._wakeup.set()  # tasks queued while we were not listening sent no hint to us
            try:
                while not listening.lost.is_set():
                    try:
                        async with asyncio.timeout(LISTEN_HEALTH_INTERVAL):
                            await listening.lost.wait()
                    except TimeoutError:
                        try:
                            async with asyncio.timeout(DB_CALL_TIMEOUT):
                                await listening.ping()
                        except Exception as exc:
                            logger.debug("listen connection ping failed: %s", exc)
                            break
                logger.warning("listen connection lost, reconnecting",
                               extra={"action": "listen_lost"})
            finally:
                listening.terminate()

    # -- running handlers ----------------------------------------------------------------------

    async def _execute(self, task: Task, runner: Runner | None, key: _Key) -> None:
        try:
            error, output = await self._attempts.run(task, runner)
        finally:
            self._running.pop(key, None)
            self._slot_freed.set()
        retry_in = runner.retry_in(task) if runner is not None else None
        if error is None:
            completion = Completion(task.run_id, task.step_slug, task.attempt, output)
            self._reporter.add(Result(completion, retry_in))
            return
        self._reporter.add(
            Result(Failure(task.run_id, task.step_slug, task.attempt, error), retry_in)
        )
        logger.warning(
            "step %s failed (attempt %d of %d): %s", task.step_slug, task.attempt,
            task.max_attempts, error,
            extra={"action": "step_failed", "run_id": str(task.run_id),
                   "step": task.step_slug, "attempt": task.attempt},
        )

    def _slot_freed_by_thread(self) -> None:
        self._slot_freed.set()

    def _on_stuck(self, stuck: int) -> None:
        if stuck < self.max_stuck_threads or self._stopping.is_set():
            return
        self._too_many_stuck = True
        logger.error(
            "%d plain handler(s) stuck in their threads past their timeout (limit %d): "
            "draining and stopping, for a supervisor to start a fresh worker", stuck,
            self.max_stuck_threads,
            extra={"action": "too_many_stuck_threads", "stuck": stuck,
                   "worker_id": self.worker_id},
        )
        self.stop()

    # -- leases --------------------------------------------------------------------------------

    def _wake_for_retry(self, delay: float) -> None:
        """A retry becomes claimable after its backoff with no NOTIFY: wake up for it."""
        asyncio.get_running_loop().call_later(delay + RETRY_WAKE_MARGIN, self._wakeup.set)

    def _held(self) -> list[tuple[uuid.UUID, str]]:
        # Only running handlers: a finished result keeps the lease it has. One that cannot be
        # reported in time is stale, and its step runs again, within one lease (guarantee 3).
        return list({(task.run_id, task.step_slug) for task, _ in self._running.values()})

    async def _heartbeat_loop(self, store: Store) -> None:
        retry = Retry("extending leases")
        interval = self.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            held = self._held()
            if not held:
                continue
            try:
                async with asyncio.timeout(min(DB_CALL_TIMEOUT, self.lease_seconds)):
                    kept = await store.extend_leases(self.worker_id, held, self.lease_seconds)
            except Exception as exc:
                retry.failed(exc)
                continue
            retry.succeeded()
            if kept < len(held):
                # Also counts results reported during the call: no warning for that.
                logger.debug("extended %d of %d leases", kept, len(held),
                             extra={"action": "lease_extend"})


# -- pgflow worker ---------------------------------------------------------------------------

def worker_command(args: argparse.Namespace) -> int:
    """``pgflow worker``: see ``pgflow.worker.cli``."""
    from pgflow.worker.cli import worker_command as command

    return command(args)
