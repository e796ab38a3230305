"""Group commit: concurrent requests run as one batch, each with its own result."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from pgflow.db.coalescer import Coalescer


class Recorder:
    """A batch function that records its batches and can be held open."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def __call__(self, requests: Sequence[int]) -> list[int | BaseException]:
        self.batches.append(list(requests))
        self.entered.set()
        await self.gate.wait()
        return [ValueError(f"odd {r}") if r % 2 else r * 10 for r in requests]


async def test_a_lone_request_goes_at_once_and_alone() -> None:
    recorder = Recorder()
    coalescer: Coalescer[int, int] = Coalescer(recorder)
    assert await asyncio.wait_for(coalescer.submit(2), 1) == 20
    assert recorder.batches == [[2]]


async def test_requests_arriving_during_a_batch_go_together_in_the_next() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    coalescer: Coalescer[int, int] = Coalescer(recorder)
    first = asyncio.create_task(coalescer.submit(0))
    await recorder.entered.wait()
    rest = [asyncio.create_task(coalescer.submit(n)) for n in (2, 4, 6)]
    await asyncio.sleep(0)
    recorder.gate.set()
    assert await asyncio.wait_for(asyncio.gather(first, *rest), 1) == [0, 20, 40, 60]
    assert recorder.batches == [[0], [2, 4, 6]]
    assert (coalescer.batches, coalescer.largest_batch) == (2, 3)


async def test_each_request_gets_its_own_exception_and_its_neighbours_their_results() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    coalescer: Coalescer[int, int] = Coalescer(recorder)
    first = asyncio.create_task(coalescer.submit(0))
    await recorder.entered.wait()
    rest = [asyncio.create_task(coalescer.submit(n)) for n in (2, 3, 4)]
    await asyncio.sleep(0)
    recorder.gate.set()
    results = await asyncio.wait_for(
        asyncio.gather(first, *rest, return_exceptions=True), 1
    )
    assert results[:2] == [0, 20]
    assert results[3] == 40
    assert isinstance(results[2], ValueError)
    assert str(results[2]) == "odd 3"
    assert recorder.batches == [[0], [2, 3, 4]]


async def test_a_failed_batch_fails_its_requests_and_the_next_batch_still_runs() -> None:
    calls: list[list[int]] = []

    async def flaky(requests: Sequence[int]) -> list[int | BaseException]:
        calls.append(list(requests))
        if len(calls) == 1:
            await asyncio.sleep(0.01)
            raise ConnectionError("lost")
        return list(requests)

    coalescer: Coalescer[int, int] = Coalescer(flaky)
    first = asyncio.create_task(coalescer.submit(1))
    await asyncio.sleep(0)
    second = asyncio.create_task(coalescer.submit(2))
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(first, 1)
    assert await asyncio.wait_for(second, 1) == 2
    assert calls == [[1], [2]]


async def test_a_request_cancelled_before_its_batch_is_left_out() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    coalescer: Coalescer[int, int] = Coalescer(recorder)
    first = asyncio.create_task(coalescer.submit(0))
    await recorder.entered.wait()
    gone = asyncio.create_task(coalescer.submit(2))
    kept = asyncio.create_task(coalescer.submit(4))
    await asyncio.sleep(0)
    gone.cancel()
    recorder.gate.set()
    assert await asyncio.wait_for(kept, 1) == 40
    assert await first == 0
    assert gone.cancelled()
    assert recorder.batches == [[0], [4]]


async def test_batches_are_bounded_and_in_flight_batches_too() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    coalescer: Coalescer[int, int] = Coalescer(recorder, max_batch=3, max_in_flight=2)
    tasks = [asyncio.create_task(coalescer.submit(n * 2)) for n in range(8)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    # two flushers started by the first two requests, each taking at most three
    assert len(recorder.batches) == 2
    assert all(len(b) <= 3 for b in recorder.batches)
    recorder.gate.set()
    assert await asyncio.wait_for(asyncio.gather(*tasks), 1) == [n * 20 for n in range(8)]
    assert sorted(r for b in recorder.batches for r in b) == [n * 2 for n in range(8)]
    assert max(len(b) for b in recorder.batches) <= 3


async def test_a_batch_function_that_loses_results_fails_loudly() -> None:
    async def short(requests: Sequence[int]) -> list[int | BaseException]:
        return list(requests)[:-1]

    coalescer: Coalescer[int, int] = Coalescer(short)
    with pytest.raises(RuntimeError, match="gave 0 results"):
        await asyncio.wait_for(coalescer.submit(1), 1)


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Coalescer(Recorder(), max_batch=0)


async def test_callers_that_submit_again_as_soon_as_they_are_answered_are_served() -> None:
    """Each answered caller submits again at once, before the finished flusher's task is
    cleaned up: a new flusher must start for them (counting flushers by their tasks' set
    left them waiting for ever)."""
    recorder = Recorder()
    coalescer: Coalescer[int, int] = Coalescer(recorder)

    async def caller() -> int:
        total = 0
        for _ in range(5):
            total += await coalescer.submit(2)
        return total

    assert await asyncio.wait_for(asyncio.gather(*(caller() for _ in range(4))), 1) == [100] * 4
