"""Flows for the large-event tests: a step whose output is as large as its run asks.

Loaded with ``--flows e2e.big_flows`` by the JS client's real-gateway tests and the browser tests.
"""

from __future__ import annotations

from typing import Any

from pgflow import Flow

MAX_BLOB_BYTES = 64 * 1024 * 1024  # a test asking for more is a mistake, not a load test

big = Flow("big", description="One step whose output is a string of input.bytes characters.",
           max_attempts=1, example_input={"bytes": 5_000_000})


@big.step(output=True)
async def blob(input: dict[str, Any]) -> dict[str, Any]:
    size = int(input["run"]["bytes"])
    if not 0 <= size <= MAX_BLOB_BYTES:
        raise ValueError(f"bytes must be from 0 to {MAX_BLOB_BYTES}, not {size}")
    return {"blob": "x" * size, "bytes": size}
