"""The benchmark's flow: a diamond of no-op handlers, so only the engine's cost shows."""

from __future__ import annotations

from typing import Any

from pgflow import Flow, StepContext

diamond = Flow("bench_diamond", max_attempts=3, base_delay=1, timeout=60)


@diamond.step()
async def a(input: Any) -> int:
    return 1


@diamond.step(depends_on=[a])
async def b(input: Any) -> int:
    return 2


@diamond.step(depends_on=[a])
async def c(input: Any) -> int:
    return 3


@diamond.step(depends_on=[b, c])
async def d(input: Any) -> int:
    return 4


# The same diamond, whose b streams 100 chunks of ~20 bytes (issue 15's "streaming runs").
streaming = Flow("bench_diamond_stream", max_attempts=3, base_delay=1, timeout=60)
STREAMED_CHUNKS = 100


@streaming.step()
async def sa(input: Any) -> int:
    return 1


@streaming.step(depends_on=[sa])
async def sb(input: Any, context: StepContext) -> int:
    for index in range(STREAMED_CHUNKS):
        context.emit(f"chunk {index:04d} of the run")
    return 2


@streaming.step(depends_on=[sa])
async def sc(input: Any) -> int:
    return 3


@streaming.step(depends_on=[sb, sc])
async def sd(input: Any) -> int:
    return 4


# A map over the run's input (issue 18): a no-op task per element.
mapped = Flow("bench_map", max_attempts=3, base_delay=1, timeout=60)


@mapped.map(over="run", output=True)
async def element(input: Any) -> None:
    return None
