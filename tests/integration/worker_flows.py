"""Flows that ``pgflow worker`` processes load in the worker tests (``--flows`` this module).

Their handlers block or take a set time on purpose: they are the work under test.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from pgflow import Flow, StepContext

SHORT_WORK = 0.6  # seconds a "quick" handler takes: long enough to be caught running
RESTART_WORK = 0.8  # seconds; long enough to finish while the database restarts


async def _forever() -> None:
    await asyncio.Event().wait()


# A step whose first attempt never ends: the SIGKILL test kills its worker meanwhile.
hangs_once = Flow("hangs_once", max_attempts=3, base_delay=0.1, timeout=60)


@hangs_once.step()
async def hang_first(input: Any, context: StepContext) -> dict[str, Any]:
    if context.attempt == 1:
        await _forever()
    return {"attempt": context.attempt}


# Streams, then its first attempt never ends: the worker is killed mid-stream.
streams_then_hangs = Flow("streams_then_hangs", max_attempts=3, base_delay=0.1, timeout=60)
STREAMED_BEFORE_HANG = 20


@streams_then_hangs.step()
async def stream_then_hang(input: Any, context: StepContext) -> dict[str, Any]:
    for i in range(STREAMED_BEFORE_HANG):
        context.emit(f"attempt {context.attempt} chunk {i}")
    if context.attempt == 1:
        await _forever()
    return {"attempt": context.attempt}


# SIGTERM: {"hang": false} finishes quickly, {"hang": true} outlives any grace.
drains = Flow("drains", max_attempts=3, base_delay=0.1, timeout=60)


@drains.step()
async def work(input: Any) -> dict[str, Any]:
    if input["run"]["hang"]:
        await _forever()
    await asyncio.sleep(SHORT_WORK)
    return {"done": True}


# The database restarts while `slow` runs.
survives = Flow("survives", max_attempts=3, base_delay=0.1, timeout=60)


@survives.step()
async def slow(input: Any) -> dict[str, Any]:
    await asyncio.sleep(RESTART_WORK)
    return {"n": input["run"]["n"]}


@survives.step(depends_on=[slow])
async def after(input: Any) -> dict[str, Any]:
    return {"n": input["slow"]["n"] + 1}


# A plain function that never returns: its thread cannot be cancelled.
stuck_thread = Flow("stuck_thread", max_attempts=3, base_delay=0.1, timeout=60)


@stuck_thread.step()
def never_returns(input: Any) -> None:
    threading.Event().wait()


# A plain function that outlives its 1 s timeout forever: its thread is stuck for good.
stuck_past_timeout = Flow("stuck_past_timeout", max_attempts=1, timeout=1)


@stuck_past_timeout.step()
def hangs_past_its_timeout(input: Any) -> None:
    threading.Event().wait()
