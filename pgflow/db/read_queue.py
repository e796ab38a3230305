"""The runs whose event log must be read, and the one loop that reads them in batches: what a
``pgflow_events`` listener does when a notification names runs by reference, or its subscribers
fell behind. The gateway's relay and the Python client each own one.

A run asked for several times before its read is read once; runs are read in the order they
were first asked for, ``batch`` at a time, one query each batch. A batch whose read fails with
one of the ``retryable`` errors goes back in the queue and is tried again after ``retry_delay``
(of the failures in a row): the log still holds what the notification announced.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

logger = logging.getLogger(__name__)


class ReadQueue:
    def __init__(
        self,
        read: Callable[[Sequence[str]], Awaitable[None]],
        *,
        batch: int,
        retryable: type[BaseException] | tuple[type[BaseException], ...],
        retry_delay: Callable[[int], float],
    ) -> None:
        self._read = read
        self.batch = batch
        self._retryable = retryable
        self._retry_delay = retry_delay
        self._pending: dict[str, None] = {}  # runs to read, in request order
        self._wakeup = asyncio.Event()

    def request(self, run_id: str) -> None:
        self._pending[run_id] = None
        self._wakeup.set()

    async def run(self) -> None:
        """Serves ``request`` forever."""
        failures = 0
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                runs = list(self._pending)[: self.batch]
                for run_id in runs:
                    del self._pending[run_id]
                try:
                    await self._read(runs)
                except self._retryable as exc:
                    failures += 1
                    logger.warning("log read failed, retrying: %s", exc,
                                   extra={"action": "log_read_error"})
                    for run_id in runs:
                        self._pending.setdefault(run_id, None)
                    await asyncio.sleep(self._retry_delay(failures))
                else:
                    failures = 0
