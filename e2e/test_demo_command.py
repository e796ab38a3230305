"""`pgflow demo` as a newcomer runs it: embedded PostgreSQL, Ctrl-C, and again on the same data."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.request
from pathlib import Path
from typing import Any

from e2e.conftest import start_demo, stop_demo

RUN_TIMEOUT = 30.0  # seconds


def request(url: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"content-type": "application/json"} if data else {}
    req = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as response:
        return json.load(response)


async def wait_for_status(url: str, run_id: str, status: str) -> dict[str, Any]:
    async with asyncio.timeout(RUN_TIMEOUT):
        while True:
            run: dict[str, Any] = await asyncio.to_thread(request, f"{url}/runs/{run_id}")
            if run["status"] == status:
                return run
            await asyncio.sleep(0.05)


async def test_demo_starts_an_embedded_database_stops_on_ctrl_c_and_restarts_on_the_same_data(
    open_tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["PGFLOW_EXAMPLE_DELAY_SCALE"] = "0.1"
    data_dir = open_tmp_path / "pgflow-data"

    first = await start_demo(["--data-dir", str(data_dir)], env)
    started = await asyncio.to_thread(
        request, f"{first.url}/rpc/run_flow", {"flow_slug": "diamond", "input": {"text": "a b c"}}
    )
    run = await wait_for_status(first.url, started["run_id"], "completed")
    assert run["output"]["words"] == 3
    assert await stop_demo(first, signal.SIGINT) == 0
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()  # the database stopped too

    second = await start_demo(["--data-dir", str(data_dir)], env)
    try:
        again = await asyncio.to_thread(request, f"{second.url}/runs/{started['run_id']}")
        assert again["status"] == "completed"
        assert again["output"] == run["output"]
    finally:
        assert await stop_demo(second, signal.SIGINT) == 0
