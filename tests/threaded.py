"""An asyncio service on a thread of its own, for tests whose body is synchronous (hypothesis
drives plain functions): the service's loop runs while the block runs, then stops cleanly."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")
START_TIMEOUT = 60.0  # seconds
STOP_TIMEOUT = 60.0  # seconds

# serve(loop, ready, stop): sets up, calls ready(value), waits for stop, cleans up.
Serve = Callable[[asyncio.AbstractEventLoop, Callable[[T], None], asyncio.Event], Awaitable[None]]


@contextmanager
def on_a_thread(serve: Serve[T], name: str) -> Iterator[T]:
    """Runs ``serve`` in its own event loop and thread; the block gets what it passed to
    ``ready``. A failure before ``ready`` is raised here."""
    started: Future[T] = Future()
    stop: asyncio.Event | None = None
    loop = asyncio.new_event_loop()

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        try:
            await serve(loop, started.set_result, stop)
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), name=name,
                              daemon=True)
    thread.start()
    try:
        yield started.result(timeout=START_TIMEOUT)
    finally:
        if stop is not None:
            loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=STOP_TIMEOUT)
        if not thread.is_alive():
            loop.close()
