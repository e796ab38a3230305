"""End-to-end harness: `pgflow demo` on a free loopback port, driven by Debian's Chromium.

The gateway runs as a real `python -m pgflow demo` process against the session's PostgreSQL
(a fresh database per test module), so what the browser sees is what a user gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright

from tests.conftest import db_url, open_tmp_path, pg_server, template_url  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "e2e" / "artifacts"
CHROMIUM = os.environ.get("PGFLOW_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
URL_LINE = re.compile(r"(?:open|listening on) (http://127\.0\.0\.1:\d+)")
START_TIMEOUT = 60.0  # seconds


@dataclass
class Demo:
    url: str
    process: asyncio.subprocess.Process
    output: list[str] = field(default_factory=list)


async def start_demo(args: list[str], env: dict[str, str], command: str = "demo") -> Demo:
    """Starts ``pgflow demo`` (or ``serve``) on a free port; returns once it prints its URL."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pgflow",
        "--log-level",
        "warning",
        command,
        "--port",
        "0",
        *args,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    lines: list[str] = []

    async def find_url() -> str:
        assert process.stdout is not None
        while line := (await process.stdout.readline()).decode():
            lines.append(line)
            if match := URL_LINE.search(line):
                return match.group(1)
        raise AssertionError("pgflow demo exited:\n" + "".join(lines))

    url = await asyncio.wait_for(find_url(), START_TIMEOUT)
    demo = Demo(url, process, lines)

    async def keep_reading() -> None:
        assert process.stdout is not None
        while line := (await process.stdout.readline()).decode():
            lines.append(line)

    asyncio.get_running_loop().create_task(keep_reading())
    return demo


async def stop_demo(demo: Demo, sig: int = signal.SIGINT) -> int:
    if demo.process.returncode is None:
        demo.process.send_signal(sig)
        try:
            await asyncio.wait_for(demo.process.wait(), 30)
        except TimeoutError:
            demo.process.kill()
            await demo.process.wait()
    return demo.process.returncode or 0


@pytest.fixture
async def demo(db_url: str) -> AsyncIterator[Demo]:  # noqa: F811 - the imported fixture
    env = {**os.environ, "PGFLOW_EXAMPLE_DELAY_SCALE": "0.5"}
    running = await start_demo(["--database-url", db_url], env)
    yield running
    await stop_demo(running)


@contextlib.asynccontextmanager
async def demo_with_flows(database_url: str, flows: str) -> AsyncIterator[Demo]:
    """``pgflow demo`` with a test's own flows too (``--flows module:attr``), its example
    latencies at a fifth."""
    env = {**os.environ, "PGFLOW_EXAMPLE_DELAY_SCALE": "0.2"}
    running = await start_demo(["--database-url", database_url, "--flows", flows], env)
    try:
        yield running
    finally:
        await stop_demo(running)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield launched
        await launched.close()


@dataclass
class WatchedPage:
    page: Page
    problems: list[str]


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[WatchedPage]:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    opened = await context.new_page()
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            problems.append(f"console {message.type}: {message.text}")

    def on_page_error(error: Any) -> None:
        problems.append(f"page error: {error}")

    opened.on("console", on_console)
    opened.on("pageerror", on_page_error)
    yield WatchedPage(opened, problems)
    await context.close()


def artifact(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name
