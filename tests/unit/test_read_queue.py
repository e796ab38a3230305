"""ReadQueue: the runs whose log must be read, deduplicated, in request order, in batches, and a
failed batch tried again (pgflow/db/read_queue.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from pgflow.db.read_queue import ReadQueue
from pgflow.errors import DatabaseUnavailableError


async def test_runs_are_read_once_each_in_request_order_in_batches() -> None:
    batches: list[list[str]] = []
    done = asyncio.Event()

    async def read(runs: Sequence[str]) -> None:
        batches.append(list(runs))
        if sum(map(len, batches)) == 5:
            done.set()

    queue = ReadQueue(read, batch=2, retryable=DatabaseUnavailableError,
                      retry_delay=lambda _: 0.0)
    for run_id in ["a", "b", "a", "c", "d", "b", "e"]:
        queue.request(run_id)
    task = asyncio.create_task(queue.run())
    await asyncio.wait_for(done.wait(), 5)
    task.cancel()
    assert batches == [["a", "b"], ["c", "d"], ["e"]]


async def test_a_failed_batch_is_read_again_after_the_delay_and_others_propagate() -> None:
    calls: list[list[str]] = []
    delays: list[int] = []
    done = asyncio.Event()

    async def read(runs: Sequence[str]) -> None:
        calls.append(list(runs))
        if len(calls) <= 2:
            raise DatabaseUnavailableError("away")
        done.set()

    def delay(failures: int) -> float:
        delays.append(failures)
        return 0.0

    queue = ReadQueue(read, batch=10, retryable=DatabaseUnavailableError, retry_delay=delay)
    queue.request("r1")
    queue.request("r2")
    task = asyncio.create_task(queue.run())
    await asyncio.wait_for(done.wait(), 5)
    task.cancel()
    assert calls == [["r1", "r2"]] * 3
    assert delays == [1, 2]  # failures in a row, for a backoff

    async def broken(runs: Sequence[str]) -> None:
        raise RuntimeError("a bug")

    queue = ReadQueue(broken, batch=10, retryable=DatabaseUnavailableError,
                      retry_delay=lambda _: 0.0)
    queue.request("r")
    with pytest.raises(RuntimeError, match="a bug"):
        await asyncio.wait_for(queue.run(), 5)
