"""The worker's finished attempts on their way to the database: queued as handlers finish,
reported in batches by ``report_steps``, and split when PostgreSQL refuses a batch.

    handlers ──add()──▶ queue ──run(), REPORTERS of them──▶ report_steps: one transaction per batch
                                  │ lost connection: the batch goes back, reported later
                                  │ refused (anything else): split in halves, each reported
                                  ▼
        a lone completion refused becomes a failure carrying the database's message; a lone
        failure refused too is dropped, and its lease runs out (docs/worker.md)

So one value PostgreSQL cannot store (or a bug) costs its own attempt, never the batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pgflow.db.store import Completion, Failure, Store
from pgflow.errors import DatabaseUnavailableError
from pgflow.worker._attempts import clip, describe_error
from pgflow.worker._retry import DB_CALL_TIMEOUT, UNREACHABLE

logger = logging.getLogger(__name__)

REPORT_BATCH_MAX = 500  # results per report_steps call
REPORTERS = 2  # report_steps calls in flight at once: the database works on both on two cores
# SQLSTATE classes after which the same batch may well go through: transaction rollback
# (serialization failure, deadlock). Lost connections are CONNECTION_ERRORS.
TRANSIENT_SQLSTATE_CLASSES = ("40",)


class Retry(Protocol):
    def failed(self, exc: BaseException) -> float: ...

    def succeeded(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Result:
    """A finished attempt, and the seconds to its retry should it be (or become) a failure
    the engine applies (None: no retry, the attempt was the step's last)."""

    item: Completion | Failure
    retry_in: float | None


def is_transient(exc: BaseException) -> bool:
    """Whether reporting the same batch again later may work: the database or the link failed,
    not the batch."""
    cause = exc.__cause__ if isinstance(exc, DatabaseUnavailableError) else exc
    if isinstance(cause, ValueError):
        # asyncpg's client-side DataError (an argument it cannot encode) is an InterfaceError,
        # which otherwise counts as a lost connection: it is the batch's fault.
        return False
    if isinstance(exc, UNREACHABLE):
        return True
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith(TRANSIENT_SQLSTATE_CLASSES)


class Reporter:
    """The queue of finished attempts and the loops reporting it (``REPORTERS`` of them).

    ``on_retry(seconds)`` is called for each applied failure whose step is retried: the engine
    sends no NOTIFY when a backoff ends, so the worker sets itself a timer.
    """

    def __init__(self, worker_id: str, on_retry: Callable[[float], None]) -> None:
        self.worker_id = worker_id
        self.refused = 0  # results the database refused, reported as failures or dropped
        self._on_retry = on_retry
        self._queue: deque[Result] = deque()
        self._in_flight = 0
        self._ready = asyncio.Event()
        self._flushing = False

    def __len__(self) -> int:
        """Results not reported yet, in flight included."""
        return len(self._queue) + self._in_flight

    def add(self, result: Result) -> None:
        self._queue.append(result)
        self._ready.set()

    def flush(self) -> None:
        """From now on, each loop returns once the queue is empty."""
        self._flushing = True
        self._ready.set()

    async def run(self, store: Store, retry: Retry) -> None:
        """Reports whatever is queued, batch by batch, until ``flush()`` and an empty queue."""
        while True:
            if not self._queue:
                if self._flushing:
                    self._ready.set()  # the other loops must see it too
                    return
                self._ready.clear()
                await self._ready.wait()
                continue
            # Everything finished since the last round goes in one call: one transaction, one
            # NOTIFY, however many steps.
            batch = [self._queue.popleft()
                     for _ in range(min(REPORT_BATCH_MAX, len(self._queue)))]
            error = await self.report(store, batch)
            if error is None:
                retry.succeeded()
            else:
                await asyncio.sleep(retry.failed(error))  # the shutdown's deadline cuts this

    async def report_all(self, store: Store) -> Exception | None:
        """Reports the whole queue at once (the last report of a cancelled worker)."""
        batch = list(self._queue)
        self._queue.clear()
        return await self.report(store, batch)

    async def report(self, store: Store, batch: list[Result]) -> Exception | None:
        """Reports ``batch``, split as far as needed around what the database refuses.

        Returns the error that stopped it when the database is unreachable: what was not
        reported then is back at the head of the queue (a repeat of a report that did commit is
        stale and changes nothing). Cancelling it puts them back too.
        """
        parts = [batch]
        self._in_flight += len(batch)
        try:
            while parts:
                part = parts.pop()
                try:
                    await self._call(store, part)
                except Exception as exc:
                    if is_transient(exc):
                        self._give_back(part, parts)
                        return exc
                    parts.extend(self._split(part, exc, whole=part is batch))
                except BaseException:
                    self._give_back(part, parts)
                    raise
            return None
        finally:
            self._in_flight -= len(batch)

    def _give_back(self, part: list[Result], parts: list[list[Result]]) -> None:
        unreported = [result for chunk in (part, *reversed(parts)) for result in chunk]
        self._queue.extendleft(reversed(unreported))

    async def _call(self, store: Store, part: list[Result]) -> None:
        done: list[Completion] = []
        failed: list[Failure] = []
        retry_in: list[float | None] = []
        for result in part:
            if isinstance(result.item, Completion):
                done.append(result.item)
            else:
                failed.append(result.item)
                retry_in.append(result.retry_in)
        async with asyncio.timeout(DB_CALL_TIMEOUT):
            _, applied = await store.report(self.worker_id, done, failed)
        for was_applied, delay in zip(applied, retry_in, strict=True):
            if was_applied and delay is not None:
                self._on_retry(delay)

    def _split(self, part: list[Result], exc: Exception, *, whole: bool) -> list[list[Result]]:
        """What to report instead of ``part``, which the database refused with ``exc``."""
        if len(part) > 1:
            logger.log(
                logging.WARNING if whole else logging.DEBUG,
                "the database refused a report of %d results, splitting it: %s", len(part),
                describe_error(exc), extra={"action": "report_split", "count": len(part)},
            )
            half = len(part) // 2
            return [part[half:], part[:half]]  # the first half is reported first
        self.refused += 1
        item = part[0].item
        if isinstance(item, Completion):
            error = clip(
                f"PostgreSQL refused the output of step {item.step_slug!r}: "
                f"{describe_error(exc)}"
            )
            logger.warning(
                "step %s: %s", item.step_slug, error,
                extra={"action": "output_refused", "run_id": str(item.run_id),
                       "step": item.step_slug, "attempt": item.attempt},
            )
            failure = Failure(item.run_id, item.step_slug, item.attempt, error)
            return [[Result(failure, part[0].retry_in)]]
        logger.error(
            "the database refused the failure of step %s (run %s), dropping it; the step runs "
            "again when its lease ends: %s", item.step_slug, item.run_id, describe_error(exc),
            exc_info=exc,
            extra={"action": "failure_refused", "run_id": str(item.run_id),
                   "step": item.step_slug, "attempt": item.attempt},
        )
        return []
