"""The chaos soak's own flow (bench/chaos.py): a map step and an HTTP step, with a short timeout
so that a callback that never comes is retried within the soak."""

from __future__ import annotations

from typing import Any

from pgflow import Flow

chaos_pipe = Flow("chaos_pipe", max_attempts=8, base_delay=0, timeout=3)


@chaos_pipe.step()
async def numbers(input: Any) -> list[int]:
    return list(range(int(input["run"]["n"])))


@chaos_pipe.map(over=numbers)
async def square(input: Any) -> int:
    return int(input["item"]) ** 2


chaos_pipe.http_step("call", url="/call", depends_on=[square])


@chaos_pipe.step(depends_on=[square, "call"], output=True)
async def finish(input: Any) -> dict[str, Any]:
    return {"sum": sum(input["square"]), "call": input["call"]}
