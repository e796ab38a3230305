"""The worker: claims ready tasks, runs their handlers, reports the results in batches.

    claim loop ──claim_tasks(n = free slots)──▶ handlers (at most `concurrency` at once)
        ▲  woken by NOTIFY pgflow_tasks, a freed slot, a retry coming due, or poll_interval
        │  (``_wakeup.py``)                         │ results queue up in memory (``_attempts.py``)
    listener (its own connection)            reporter ──report_steps──▶ one transaction per round
    heartbeat: one extend_leases call for every running handler, every lease/3 (``_heartbeat.py``)
    retention (optional): prune_runs rounds for runs finished long ago (``_retention.py``)

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

import asyncio
import dataclasses
import logging
import threading
import uuid
from collections.abc import Collection, Sequence
from datetime import timedelta
from typing import Any

import orjson

from pgflow.db.definitions import flow_key, sync_flows
from pgflow.db.json_values import UnstorableJSONError, encode_json
from pgflow.db.store import Completion, Failure, Store, Task
from pgflow.errors import ConfigurationError, DatabaseUnavailableError, PGFlowError
from pgflow.flows import Flow
from pgflow.worker import _log_stream as log_stream
from pgflow.worker._attempts import Attempts, Runner, clip, describe_error, runners
from pgflow.worker._heartbeat import heartbeat
from pgflow.worker._http_dispatch import (
    DEFAULT_HTTP_CONCURRENCY,
    Completed,
    Deferred,
    HttpDispatcher,
)
from pgflow.worker._options import (
    DEFAULT_CONCURRENCY,
    DEFAULT_LEASE,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_RETENTION_INTERVAL,
    DEFAULT_SHUTDOWN_GRACE,
    check_options,
    default_worker_id,
)
from pgflow.worker._reporter import REPORTERS, Reporter
from pgflow.worker._retention import retention
from pgflow.worker._retry import DB_CALL_TIMEOUT, Retry
from pgflow.worker._streams import DEFAULT_STREAM_INTERVAL, Streams
from pgflow.worker._wakeup import Wakeup

logger = logging.getLogger(__name__)

POOL_SIZE = 4  # claim, report, heartbeat, and one for shutdown
FLUSH_TIMEOUT = 10.0  # seconds, on shutdown, to report the last results and release the rest
ABORT_TIMEOUT = 2.0  # seconds for the same when aborting
STUCK_EXIT_STATUS = 3  # `pgflow worker`'s exit status after too many stuck handler threads

_Key = tuple[uuid.UUID, str, int]  # run_id, step_slug, attempt


class StuckThreadsError(PGFlowError):
    """Too many plain handlers are stuck in their threads past their timeout: the worker
    drained and stopped, so that its supervisor can start a fresh process."""


class Worker:
    """Runs the handlers of ``flows``: claims their ready tasks, runs them, reports back.

    ``run()`` opens its own pool and LISTEN connection and works until ``stop()``. Call
    ``stop()`` from the event loop's thread (another thread is fine too: it is handed over).

    Behind PgBouncer in transaction mode: ``database_url`` is PgBouncer's, ``pgbouncer=True``,
    and ``listen_database_url`` reaches PostgreSQL directly (docs/worker.md).
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
        listen_database_url: str | None = None,
        pgbouncer: bool = False,
        retention: timedelta | None = None,
        retention_interval: float = DEFAULT_RETENTION_INTERVAL,
        stream_interval: float = DEFAULT_STREAM_INTERVAL,
        stream_logs: bool = False,
        http_secret: str | None = None,
        http_concurrency: int = DEFAULT_HTTP_CONCURRENCY,
        http_base_url: str | None = None,
        callback_url: str | None = None,
    ) -> None:
        if not stream_interval > 0:
            raise ConfigurationError(
                f"the stream interval must be positive seconds, not {stream_interval!r}")
        check_options(
            flows, concurrency=concurrency, batch_size=batch_size, lease_seconds=lease_seconds,
            poll_interval=poll_interval, shutdown_grace=shutdown_grace,
            max_stuck_threads=max_stuck_threads, retention=retention,
            retention_interval=retention_interval,
        )
        self.database_url = database_url
        # LISTEN needs a session: a direct URL when database_url goes through PgBouncer
        self.listen_database_url = listen_database_url or database_url
        self.pgbouncer = pgbouncer  # database_url is PgBouncer in transaction mode
        self.flows = list(flows)
        self.concurrency = concurrency
        self.batch_size = batch_size or concurrency
        self.lease_seconds = float(lease_seconds)
        self.poll_interval = float(poll_interval)
        self.shutdown_grace = float(shutdown_grace)
        self.worker_id = worker_id or default_worker_id()
        # Default: as many as slots, the most the worker could have had before slots were freed.
        self.max_stuck_threads = max_stuck_threads or concurrency
        # None: runs are kept; else runs finished longer ago are pruned (``_retention.py``)
        self.retention = retention
        self.retention_interval = float(retention_interval)
        self.started = asyncio.Event()

        self._slugs = frozenset(f.slug for f in self.flows)
        self._runners = runners(self.flows, stream_logs=stream_logs)
        # HTTP steps: (flow slug, step slug) -> url, dispatched to their functions
        self._http_urls = {(f.slug, s.slug): s.url for f in self.flows
                           for s in f.steps.values() if s.kind == "http" and s.url is not None}
        if self._http_urls and not http_secret:
            raise ConfigurationError(
                "flows with HTTP steps ("
                + ", ".join(sorted(f"{flow}.{step}" for flow, step in self._http_urls))
                + ") need the secret their functions verify: --http-secret or PGFLOW_HTTP_SECRET")
        self.http_secret = http_secret
        self.http_concurrency = http_concurrency
        self.http_base_url = http_base_url
        self.callback_url = callback_url
        self._dispatcher: HttpDispatcher | None = None
        self._store: Store | None = None
        self._attempts = Attempts(
            self.worker_id, concurrency, self._slot_freed_by_thread,
            max_stuck=self.max_stuck_threads, on_stuck=self._on_stuck,
        )
        self._wakeup = Wakeup(self._slugs)  # a task may be ready: claim now
        # what its claims ask for: the keys of the flow versions its code has, once defined
        self.flow_slugs = sorted(self._slugs)
        self._slug_of_key: dict[str, str] = {}
        self._claiming = 0  # slots held for claims in flight (the claim loop's, the reports')
        self._reporter = Reporter(self.worker_id, self._wakeup.after, self)
        # what running steps stream (ctx.emit), written together every stream_interval
        self._streams = Streams(self.worker_id, stream_interval)
        self._too_many_stuck = False

        self._stopping = asyncio.Event()
        self._aborting = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._running: dict[_Key, tuple[Task, asyncio.Task[None]]] = {}
        # each running attempt's StepContext.cancelled, set when its run is cancelled
        self._cancel_signals: dict[_Key, threading.Event] = {}
        self.cancelled_attempts = 0  # attempts stopped because their run was cancelled
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
            InvalidFlowError: a flow cannot be defined as declared.
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
        streams_logs = any(r.stream_logs for r in self._runners.values())
        if streams_logs:
            log_stream.install()
        try:
            if await self._sync_flows(store):
                await self._work(store)
        finally:
            if streams_logs:
                log_stream.uninstall()
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
                store = await Store.open(self.database_url, min_size=1,
                                         max_size=POOL_SIZE + (self.retention is not None),
                                         statement_cache=not self.pgbouncer)
            except DatabaseUnavailableError as exc:
                await self._wait(self._stopping, retry.failed(exc))
                continue
            retry.succeeded()
            return store
        return None

    async def _sync_flows(self, store: Store) -> bool:
        retry = Retry("defining flows")
        while not self._stopping.is_set():
            try:
                async with asyncio.timeout(DB_CALL_TIMEOUT):
                    versions = await sync_flows(store, self.flows)
            except (DatabaseUnavailableError, TimeoutError) as exc:
                await self._wait(self._stopping, retry.failed(exc))
                continue
            retry.succeeded()
            # the versions this code has: a run of another version is never claimed here
            self._slug_of_key = {flow_key(slug, version): slug
                                 for slug, version in versions.items()}
            self.flow_slugs = sorted(self._slug_of_key)
            self._wakeup.serve(self._slug_of_key)
            return True
        return False

    async def _close_store(self, store: Store) -> None:
        try:
            async with asyncio.timeout(ABORT_TIMEOUT):
                await store.close()
        except Exception:
            store.terminate()

    async def _work(self, store: Store) -> None:
        self._store = store
        if self._http_urls and self.http_secret:
            self._dispatcher = HttpDispatcher(
                self.http_secret, concurrency=self.http_concurrency,
                base_url=self.http_base_url, callback_url=self.callback_url)
        try:
            await self._work_with(store)
        finally:
            if self._dispatcher is not None:
                await self._dispatcher.aclose()

    async def _work_with(self, store: Store) -> None:
        async with asyncio.TaskGroup() as group:
            listener = group.create_task(
                self._wakeup.listen(self.listen_database_url,
                                    f"pgflow worker {self.worker_id}"[:63],
                                    Retry("listening for tasks"), self._run_cancelled),
                name="pgflow-worker-listen",
            )
            beat = group.create_task(
                heartbeat(store, self.worker_id, self.lease_seconds, self._held),
                name="pgflow-worker-heartbeat",
            )
            streamer = group.create_task(self._streams.run(store),
                                         name="pgflow-worker-streams")
            reporters = [
                group.create_task(self._reporter.run(store, Retry("reporting results")),
                                  name=f"pgflow-worker-report-{n}")
                for n in range(REPORTERS)
            ]
            pruner = None
            if self.retention is not None:
                pruner = group.create_task(
                    retention(store, self.retention, self.retention_interval),
                    name="pgflow-worker-retention",
                )
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
                if pruner is not None:
                    pruner.cancel()  # a shutdown prunes nothing
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
                for side in (listener, beat, streamer, *reporters, pruner):
                    if side is not None:
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
        return self.concurrency - len(self._running) - self._claiming

    def reserve(self) -> int:
        """Slots for a report's claim (``_reporter.Slots``): none while stopping."""
        if self._stopping.is_set():
            return 0
        wanted = max(0, min(self._free_slots(), self.batch_size))
        self._claiming += wanted
        return wanted

    def claimed(self, tasks: list[Task], reserved: int) -> None:
        self._claiming -= reserved
        for task in tasks:
            self._start(task)
        if len(tasks) < reserved:
            self._slot_freed.set()

    async def _claim_loop(self, store: Store) -> None:
        retry = Retry("claiming tasks")
        claim_now = True  # at start, and after a full batch: more may be waiting
        while not self._stopping.is_set():
            free = self._free_slots()
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            if not claim_now:
                await self._wakeup.wait(self.poll_interval)
                if self._stopping.is_set():
                    return
            self._wakeup.clear()  # before the claim: a hint arriving during it is kept
            # re-read: a report's claim may have taken slots while this loop waited
            wanted = min(self._free_slots(), self.batch_size)
            if wanted <= 0:
                # a report's claim holds the slots: the hint just taken is not lost, this loop
                # claims as soon as they are freed instead of waiting for the next hint
                claim_now = True
                continue
            self._claiming += wanted
            tasks: list[Task] = []
            failure: Exception | None = None
            try:
                async with asyncio.timeout(DB_CALL_TIMEOUT):
                    tasks = await store.claim_tasks(
                        self.worker_id, wanted, flow_slugs=self.flow_slugs,
                        lease_seconds=self.lease_seconds,
                    )
            except Exception as exc:
                failure = exc
            finally:
                self.claimed(tasks, wanted)
            if failure is not None:
                await self._wait(self._stopping, retry.failed(failure))
                claim_now = True
                continue
            retry.succeeded()
            claim_now = len(tasks) >= wanted

    def _start(self, task: Task) -> None:
        # claimed under its version's key (the slug itself for a version 1); the handler is
        # told the flow's slug
        slug = self._slug_of_key.get(task.flow_slug, task.flow_slug)
        if slug != task.flow_slug:
            task = dataclasses.replace(task, flow_slug=slug)
        key = (task.run_id, task.step_slug, task.attempt)
        step_slug = self._step_of(task)
        url = self._http_urls.get((task.flow_slug, step_slug))
        if url is not None:
            self._running[key] = (task, asyncio.create_task(self._dispatch(task, url, key)))
            return
        runner = self._runners.get((task.flow_slug, step_slug))
        self._running[key] = (task, asyncio.create_task(self._execute(task, runner, key)))

    @staticmethod
    def _step_of(task: Task) -> str:
        """The step whose handler runs ``task``: a map step's element runs its map step's."""
        element = task.map_element
        return element[0] if element is not None else task.step_slug

    async def _wait(self, event: asyncio.Event, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            pass

    # -- running handlers ----------------------------------------------------------------------

    async def _execute(self, task: Task, runner: Runner | None, key: _Key) -> None:
        stream = self._streams.open(key) if runner is not None and runner.streams else None
        cancel_signal = self._cancel_signals[key] = threading.Event()
        try:
            error, output = await self._attempts.run(task, runner, stream, cancel_signal)
        except asyncio.CancelledError:
            self._streams.abandon(key)  # the task goes back (or its run ended), its stream too
            if cancel_signal.is_set() and not self._aborting.is_set():
                return  # its run was cancelled: the engine ended the step; nothing to report
            raise
        except BaseException:
            self._streams.abandon(key)
            raise
        finally:
            self._attempt_ended(key)
        if cancel_signal.is_set():
            # a plain handler that returned after its run was cancelled: its report would be
            # stale; its stream is dropped with it
            self._streams.abandon(key)
            return
        if stream is not None:
            # every chunk of the attempt is in the log before its result is reported
            await self._streams.close(key)
        self._report(task, error, output)

    def _attempt_ended(self, key: _Key) -> None:
        """An attempt no longer runs here: its slot is free, its run's cancel is moot."""
        self._running.pop(key, None)
        self._cancel_signals.pop(key, None)
        self._slot_freed.set()

    def _report(self, task: Task, error: str | None, output: Any, *,
                final: bool = False) -> None:
        """Hands a finished attempt's result to the reporter (a final failure is the
        caller's to report), and logs a failure."""
        if error is None:
            self._reporter.add(Completion(task.run_id, task.step_slug, task.attempt, output))
            return
        if not final:
            self._reporter.add(Failure(task.run_id, task.step_slug, task.attempt, error))
        logger.warning(
            "step %s failed (attempt %d of %d%s): %s", task.step_slug, task.attempt,
            task.max_attempts, ", for good" if final else "", error,
            extra={"action": "step_failed", "run_id": str(task.run_id),
                   "step": task.step_slug, "attempt": task.attempt},
        )

    async def _dispatch(self, task: Task, url: str, key: _Key) -> None:
        """An HTTP step's attempt: its function is called (``_http_dispatch.py``); its answer
        is reported like a handler's, or (202) waited for without a slot: the lease becomes
        the step's timeout, and the function calls back through the gateway."""
        assert self._dispatcher is not None
        assert self._store is not None
        cancel_signal = self._cancel_signals[key] = threading.Event()
        try:
            outcome = await self._dispatcher.call(task, url, self.worker_id)
            if isinstance(outcome, Deferred):
                try:
                    await self._store.extend_leases(self.worker_id, [(task.run_id, task.step_slug)],
                                                    lease_seconds=task.timeout)
                except PGFlowError as error:  # its lease runs out: the call is made again
                    logger.warning("step %s: could not wait for its callback: %s",
                                   task.step_slug, error, extra={"action": "http_defer_failed"})
                return
        except asyncio.CancelledError:
            if cancel_signal.is_set() and not self._aborting.is_set():
                return  # its run was cancelled: nothing to report
            raise
        finally:
            self._attempt_ended(key)
        if cancel_signal.is_set():
            return
        if isinstance(outcome, Completed):
            try:
                encoded = encode_json(outcome.output)
            except UnstorableJSONError as error:
                self._report(task, clip(f"step {task.step_slug!r} returned {error}"), None)
            else:
                self._report(task, None, orjson.Fragment(encoded))
            return
        if outcome.final:  # the function refused this input: no attempt can mend it
            try:
                await self._store.fail_step(task.run_id, task.step_slug, outcome.error,
                                            self.worker_id, task.attempt, retry=False)
            except PGFlowError as error:  # its lease runs out, and the call is made again
                logger.warning("step %s: its failure could not be reported: %s",
                               task.step_slug, error, extra={"action": "http_fail_failed"})
        self._report(task, outcome.error, None, final=outcome.final)

    def _run_cancelled(self, payload: str) -> None:
        """``pgflow_cancels``: stops the attempts of that run running here. An async handler's
        task is cancelled; a plain handler's thread cannot be, so it sees
        ``context.cancelled``."""
        for key, (task, handler) in list(self._running.items()):
            if str(task.run_id) != payload:
                continue
            signal = self._cancel_signals.get(key)
            if signal is None or signal.is_set():
                continue
            signal.set()
            self.cancelled_attempts += 1
            runner = self._runners.get((task.flow_slug, self._step_of(task)))
            if runner is None or runner.is_async:  # an HTTP call, or an async handler
                handler.cancel()
            logger.info("step %s stopped: its run was cancelled", task.step_slug,
                        extra={"action": "step_cancelled", "run_id": payload,
                               "step": task.step_slug, "attempt": task.attempt})

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

    # -- leases (``_heartbeat.py``) -------------------------------------------------------------

    def _held(self) -> list[tuple[uuid.UUID, str]]:
        # Only running handlers: a finished result keeps the lease it has. One that cannot be
        # reported in time is stale, and its step runs again, within one lease (guarantee 3).
        return list({(task.run_id, task.step_slug) for task, _ in self._running.values()})
