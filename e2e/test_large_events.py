"""A ~5 MB event reaches the JS client in Chromium, from a real `pgflow demo`.

The gateway negotiates permessage-deflate with the browser; events past --deflate-max-bytes
(1 MiB) go out uncompressed, which every client takes (Node's WebSocket refuses compressed
messages that inflate past 4 MiB: client_js/test/real_gateway.test.js holds that side).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from e2e.conftest import Demo, WatchedPage, start_demo, stop_demo

BYTES = 5_000_000
RUN_TIMEOUT = 30_000  # ms


@pytest.fixture
async def big_demo(db_url: str) -> AsyncIterator[Demo]:
    env = {**os.environ, "PGFLOW_EXAMPLE_DELAY_SCALE": "0.2"}
    running = await start_demo(["--database-url", db_url, "--flows", "e2e.big_flows"], env)
    yield running
    await stop_demo(running)


async def test_a_5_mb_event_reaches_the_client_in_chromium_on_one_socket(
    big_demo: Demo, page: WatchedPage
) -> None:
    await page.page.context.route("**/favicon.ico", lambda route: route.fulfill(status=204))
    sockets: list[str] = []
    page.page.on("websocket", lambda ws: sockets.append(ws.url))
    await page.page.goto(big_demo.url + "/healthz")
    await page.page.add_script_tag(
        content='import * as pgflow from "/client.js"; window.pgflow = pgflow;', type="module"
    )
    await page.page.wait_for_function("window.pgflow !== undefined", timeout=10_000)
    result: Any = await page.page.evaluate(
        """async ([bytes, timeout]) => {
          const output = await window.pgflow.triggerFlow("big", { bytes }, { timeout });
          return { bytes: output.bytes, length: output.blob.length };
        }""",
        [BYTES, RUN_TIMEOUT],
    )
    assert result == {"bytes": BYTES, "length": BYTES}
    assert len(sockets) == 1, sockets
    assert page.problems == []
