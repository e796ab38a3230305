"""Helpers of the worker tests: bounded waits and ``pgflow worker`` subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pgflow.db.local_server import PostgresCluster
from pgflow.db.store import Store
from pgflow.flows import Flow
from pgflow.worker import Worker

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
CHECK_EVERY = 0.05  # seconds between two checks of a bounded wait
FINISHED = ("completed", "failed", "cancelled")


async def wait_until(
    check: Callable[[], Awaitable[T | None]], *, timeout: float, what: str
) -> T:
    """Returns the first non-None, non-False result of ``check``; fails after ``timeout``."""
    async with asyncio.timeout(timeout):
        while True:
            result = await check()
            if result is not None and result is not False:
                return result
            await asyncio.sleep(CHECK_EVERY)
    raise AssertionError(f"timed out waiting for {what}")  # pragma: no cover


async def wait_for_run(store: Store, run_id: uuid.UUID, *, timeout: float = 10.0) -> dict[str, Any]:
    """The run once it completed or failed."""

    async def finished() -> dict[str, Any] | None:
        run = await store.get_run(run_id)
        return run if run is not None and run["status"] in FINISHED else None

    try:
        return await wait_until(finished, timeout=timeout, what=f"run {run_id} to finish")
    except TimeoutError:
        raise AssertionError(
            f"run {run_id} did not finish within {timeout} s: {await store.get_run(run_id)}"
        ) from None


def step_of(run: dict[str, Any], slug: str) -> dict[str, Any]:
    return next(s for s in run["steps"] if s["step_slug"] == slug)


class WorkerProcess:
    """A ``python -m pgflow worker`` child; its stderr is collected line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._new_line = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip())
            self._new_line.set()

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    async def wait_for_line(self, text: str, *, timeout: float = 15.0) -> str:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for line in self.lines:
                        if text in line:
                            return line
                    if self.process.returncode is not None and self._reader.done():
                        raise AssertionError(
                            f"worker exited ({self.process.returncode}) without logging "
                            f"{text!r}:\n{self.stderr}"
                        )
                    self._new_line.clear()
                    await self._new_line.wait()
        except TimeoutError:
            raise AssertionError(f"worker never logged {text!r}:\n{self.stderr}") from None

    def send(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def wait(self, *, timeout: float = 15.0) -> int:
        try:
            async with asyncio.timeout(timeout):
                code = await self.process.wait()
                await self._reader
        except TimeoutError:
            raise AssertionError(
                f"worker still running after {timeout} s:\n{self.stderr}"
            ) from None
        return code

    async def close(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        await self._reader


async def start_worker(
    database_url: str, *options: str, flows: str = "tests.integration.worker_flows",
    env: dict[str, str] | None = None,
) -> WorkerProcess:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pgflow", "worker", "--database-url", database_url,
        "--flows", flows, *options,
        cwd=REPO_ROOT,
        env={**os.environ, "PGFLOW_EXAMPLE_DELAY_SCALE": "0.05", **(env or {})},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    return WorkerProcess(process)


@contextlib.asynccontextmanager
async def running_worker(
    database_url: str, *options: str, flows: str = "tests.integration.worker_flows",
    env: dict[str, str] | None = None, ready: bool = True,
) -> AsyncIterator[WorkerProcess]:
    """A worker process for the block; killed at the end if it still runs."""
    worker = await start_worker(database_url, *options, flows=flows, env=env)
    try:
        if ready:
            await worker.wait_for_line("worker started")
        yield worker
    finally:
        await worker.close()


def sigkill(worker: WorkerProcess) -> None:
    worker.send(signal.SIGKILL)


@contextlib.asynccontextmanager
async def server_down(cluster: PostgresCluster) -> AsyncIterator[None]:
    """PostgreSQL stopped for the block, then started again on the same port."""
    await asyncio.to_thread(cluster._pg_ctl, "-w", "-m", "fast", "stop")
    try:
        yield
    finally:
        options = f"-h 127.0.0.1 -p {cluster.port} -k {cluster._socket_dir()}"
        options += "".join(f" -c {name}={value}" for name, value in cluster.settings.items())
        await asyncio.to_thread(
            cluster._pg_ctl, "-w", "-l", str(cluster.data_dir / "server.log"), "-o", options,
            "start",
        )


QUICK_POLL = 0.1  # seconds: in-process workers poll often, so that tests never wait long


@contextlib.asynccontextmanager
async def running(
    db_url: str, flows: Sequence[Flow], **options: Any
) -> AsyncIterator[Worker]:
    """A Worker running in this loop for the block; aborted at the end."""
    options.setdefault("poll_interval", QUICK_POLL)
    worker = Worker(db_url, flows, **options)
    task = asyncio.create_task(worker.run())
    started = asyncio.create_task(worker.started.wait())
    await asyncio.wait({task, started}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    started.cancel()
    if task.done():
        task.result()
    assert worker.started.is_set(), "the worker did not start"
    try:
        yield worker
    finally:
        worker.stop()
        worker.stop()  # tests that care about a graceful stop do it themselves
        async with asyncio.timeout(10):
            await task
