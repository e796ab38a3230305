"""The streaming benchmark's flows (bench/stream.py): steps that only stream."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from pgflow import Flow, StepContext

fast = Flow("bench_stream_fast", max_attempts=1, timeout=600)


@fast.step()
async def emit_fast(input: Any, context: StepContext) -> int:
    """As fast as it can: ``chunks`` chunks of 20 random hex digits (as little compressible
    as a model's tokens)."""
    count = int(input["run"]["chunks"])
    for _ in range(count):
        await context.emit_async(os.urandom(10).hex())
    return count


paced = Flow("bench_stream_paced", max_attempts=1, timeout=600)


@paced.step()
async def emit_paced(input: Any, context: StepContext) -> int:
    """``chunks`` chunks from ``start_at`` (epoch seconds) and ``wait`` seconds more, ``burst``
    at a time (as a model's tokens come off the network) every ``every`` seconds; each is its
    index and the wall-clock time it was emitted (``"<index>:<time>"``, 20-odd bytes)."""
    run = input["run"]
    # all the runs of a measurement start streaming at one moment (start_at, epoch seconds)
    await asyncio.sleep(max(0.0, float(run.get("start_at", 0)) - time.time()))
    await asyncio.sleep(float(run.get("wait", 0)))
    every = float(run["every"])
    burst = int(run.get("burst", 1))
    count = int(run["chunks"])
    for index in range(count):
        context.emit(f"{index}:{time.time():.4f}")
        if (index + 1) % burst == 0:
            await asyncio.sleep(every)
    return count
