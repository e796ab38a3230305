"""Group commit: concurrent requests for the same kind of database work, run as one batch.

The first request finds nothing in flight and goes at once, so one user waits for no timer.
Requests that arrive while a batch is in flight queue, and go together in the next batch as
soon as it returns: under load, each batch carries what arrived during the previous one, and a
request waits at most for the batch ahead of it (the "linger" is the database's own latency,
never a sleep). So many users' transactions, commits and notifications become one each.

A batch function returns one result or one exception per request, in order: what fails is the
request it belongs to, not its neighbours. A request cancelled before its batch is sent is
left out of it; once sent, the batch runs to its end (its work may commit, as a request whose
client went away after sending it would).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Request = TypeVar("Request")
Result = TypeVar("Result")

BatchFunction = Callable[[Sequence[Request]], Awaitable[Sequence[Result | BaseException]]]


class Coalescer(Generic[Request, Result]):
    """Runs ``submit``ted requests through ``run_batch``, at most ``max_batch`` at a time and
    ``max_in_flight`` batches at once."""

    def __init__(
        self,
        run_batch: BatchFunction[Request, Result],
        *,
        max_batch: int = 256,
        max_in_flight: int = 1,
    ) -> None:
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be at least 1")
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._queue: list[tuple[Request, asyncio.Future[Result]]] = []
        self._flushers: set[asyncio.Task[None]] = set()  # strong references while they run
        self._in_flight = 0  # flushers running; counted here, not by the set, whose
        # done-callbacks run a loop iteration after the flusher ends
        self.batches = 0  # batches sent, for metrics and tests
        self.largest_batch = 0

    async def submit(self, request: Request) -> Result:
        """The request's result, or its exception raised."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((request, future))
        if self._in_flight < self._max_in_flight:
            self._in_flight += 1
            flusher = asyncio.create_task(self._flush())
            self._flushers.add(flusher)
            flusher.add_done_callback(self._flushers.discard)
        return await future

    async def _flush(self) -> None:
        try:
            await self._flush_queue()
        finally:
            self._in_flight -= 1

    async def _flush_queue(self) -> None:
        while self._queue:
            taken = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            batch = [(request, future) for request, future in taken if not future.done()]
            if not batch:
                continue
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(batch))
            try:
                results = await self._run_batch([request for request, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(
                        f"a batch of {len(batch)} requests gave {len(results)} results"
                    )
            except asyncio.CancelledError:
                for _, future in batch:
                    future.cancel()
                for _, future in self._queue:
                    future.cancel()
                self._queue.clear()
                raise
            except Exception as exc:  # the batch as a whole failed: each request fails with it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
