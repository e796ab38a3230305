"""The benchmark's flow: a diamond of no-op handlers, so only the engine's cost shows."""

from __future__ import annotations

from typing import Any

from pgflow import Flow

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
