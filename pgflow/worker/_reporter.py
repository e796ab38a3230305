"""The worker's finished attempts on their way to the database: queued as handlers finish,
reported in batches by ``report_steps``, and split when PostgreSQL refuses a batch.

    handlers ──add()──▶ queue ──run(), REPORTERS of them──▶ report_steps: one transaction per batch
                                  │ lost connection, deadlock: the batch goes back, reported later
                                  │ refused (anything else): split in halves, each reported
                                  ▼
        a lone completion refused becomes a failure carrying the database's message; a lone
        failure refused too is dropped, and its lease runs out (docs/worker.md)

So one value PostgreSQL cannot store (or a bug) costs its own attempt, never the batch. When
the worker has free slots, a report claims in the same transaction (``report_and_claim``): the
steps it made ready come back as tasks, without a wake-up and a claim of their own. The engine
sets each retry's backoff; after a report that applied failures the reporter reads when
their retries come due (``Store.retry_delays``) and tells the worker, which sets a timer.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Protocol

from pgflow.db.backoff import Retry
from pgflow.db.store import Completion, Failure, Store, Task
from pgflow.errors import DatabaseError, DatabaseUnavailableError, TransientDatabaseError
from pgflow.worker._attempts import clip, describe_error
from pgflow.worker._retry import DB_CALL_TIMEOUT

logger = logging.getLogger(__name__)

REPORT_BATCH_MAX = 500  # results per report_steps call
REPORTERS = 2  # report_steps calls in flight at once: the database works on both on two cores
Result = Completion | Failure  # a finished attempt


def is_transient(exc: BaseException) -> bool:
    """Whether reporting the same batch again later may work: the database or the link failed
    (or a deadlock cut the transaction), not the batch."""
    return isinstance(exc, DatabaseUnavailableError | TransientDatabaseError | TimeoutError)


def describe_refusal(exc: BaseException) -> str:
    """The database's own words for a refusal (``UntranslatableCharacterError: ...``)."""
    if isinstance(exc, DatabaseError) and exc.__cause__ is not None:
        return describe_error(exc.__cause__)
    return describe_error(exc)


class Slots(Protocol):
    """The worker's free slots, as a report that claims sees them."""

    flow_slugs: list[str]
    lease_seconds: float

    def reserve(self) -> int:
        """Slots held for a claim (0: claim nothing); they stay held until ``claimed``."""

    def claimed(self, tasks: list[Task], reserved: int) -> None:
        """Starts ``tasks`` and frees the ``reserved`` slots they did not fill."""


class Reporter:
    """The queue of finished attempts and the loops reporting it (``REPORTERS`` of them).

    ``on_retry(seconds)`` is called for each applied failure whose step is retried, with the
    seconds the engine set for its backoff: it sends no NOTIFY when a backoff ends, so the
    worker sets itself a timer. With ``slots``, each report also claims into the free ones.
    """

    def __init__(self, worker_id: str, on_retry: Callable[[float], None],
                 slots: Slots | None = None) -> None:
        self.worker_id = worker_id
        self.slots = slots
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
        for result in part:
            if isinstance(result, Completion):
                done.append(result)
            else:
                failed.append(result)
        slots = self.slots
        reserved = slots.reserve() if slots is not None else 0
        tasks: list[Task] = []
        try:
            async with asyncio.timeout(DB_CALL_TIMEOUT):
                if slots is not None and reserved > 0:
                    _, applied, tasks = await store.report_and_claim(
                        self.worker_id, done, failed, max_tasks=reserved,
                        flow_slugs=slots.flow_slugs, lease_seconds=slots.lease_seconds)
                else:
                    _, applied = await store.report(self.worker_id, done, failed)
        finally:
            if slots is not None:
                slots.claimed(tasks, reserved)
        retried = [f for f, was_applied in zip(failed, applied, strict=True) if was_applied]
        if retried:
            await self._wake_for_retries(store, retried)

    async def _wake_for_retries(self, store: Store, failures: list[Failure]) -> None:
        try:
            async with asyncio.timeout(DB_CALL_TIMEOUT):
                delays = await store.retry_delays(failures)
        except Exception as exc:  # reported already: the worker's poll finds the retries
            logger.debug("could not read when retries come due: %s", describe_error(exc),
                         extra={"action": "retry_delays_failed"})
            return
        for delay in delays:
            if delay is not None:
                self._on_retry(delay)

    def _split(self, part: list[Result], exc: Exception, *, whole: bool) -> list[list[Result]]:
        """What to report instead of ``part``, which the database refused with ``exc``."""
        if len(part) > 1:
            logger.log(
                logging.WARNING if whole else logging.DEBUG,
                "the database refused a report of %d results, splitting it: %s", len(part),
                describe_refusal(exc), extra={"action": "report_split", "count": len(part)},
            )
            half = len(part) // 2
            return [part[half:], part[:half]]  # the first half is reported first
        self.refused += 1
        item = part[0]
        if isinstance(item, Completion):
            error = clip(
                f"PostgreSQL refused the output of step {item.step_slug!r}: "
                f"{describe_refusal(exc)}"
            )
            logger.warning(
                "step %s: %s", item.step_slug, error,
                extra={"action": "output_refused", "run_id": str(item.run_id),
                       "step": item.step_slug, "attempt": item.attempt},
            )
            return [[Failure(item.run_id, item.step_slug, item.attempt, error)]]
        logger.error(
            "the database refused the failure of step %s (run %s), dropping it; the step runs "
            "again when its lease ends: %s", item.step_slug, item.run_id, describe_refusal(exc),
            exc_info=exc,
            extra={"action": "failure_refused", "run_id": str(item.run_id),
                   "step": item.step_slug, "attempt": item.attempt},
        )
        return []
