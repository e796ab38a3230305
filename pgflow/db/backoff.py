"""The one backoff rule for trying the database again: the worker's loops and the listener's
reconnects use it, each with its own first and longest delay."""

from __future__ import annotations

import random
from typing import Protocol

# Jitter from a generator of our own: the global one belongs to the application (and tests
# seed it, or watch it).
jitter = random.Random()


def backoff_delay(failures: int, *, first: float, longest: float) -> float:
    """Seconds to wait after ``failures`` consecutive failures (1 or more).

    The ceiling starts at ``first`` and doubles per failure up to ``longest``; the delay is
    drawn between half the ceiling and the ceiling, so that clients cut off together do not
    come back together.
    """
    ceiling = min(longest, first * 2.0 ** min(max(failures, 1) - 1, 30))
    return ceiling * jitter.uniform(0.5, 1.0)


class Retry(Protocol):
    """Consecutive failures of one loop: ``failed`` logs one and gives the seconds to wait."""

    def failed(self, exc: BaseException) -> float: ...

    def succeeded(self) -> None: ...
