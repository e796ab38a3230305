"""The event loop ``pgflow worker`` and ``pgflow serve`` run on: uvloop where it is installed
(a dependency on Linux and macOS), asyncio's own elsewhere.

A worker's own CPU per step is mostly event-loop work (a task, a timer and a few callbacks per
step, two socket round trips per batch), and uvloop does that work for about 12 % less CPU per
step here (BENCHMARKS.md). The gateway's is sockets and callbacks too: about 12 % less CPU per
interactive run (``bench/interactive.py``). On a machine they share with PostgreSQL, that CPU
is the engine's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, on uvloop when it can be imported."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
