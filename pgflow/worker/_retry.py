"""Retrying a worker loop after database errors: the backoff, and logging an outage so that it
keeps saying it is retrying without a line per attempt."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from pgflow.db.backoff import backoff_delay
from pgflow.errors import DatabaseUnavailableError
from pgflow.worker._attempts import describe_error

logger = logging.getLogger("pgflow.worker.worker")

DB_CALL_TIMEOUT = 20.0  # seconds; a call stuck longer is abandoned and retried
RETRY_BASE_DELAY = 0.1  # seconds: the first wait after a database error
RETRY_MAX_DELAY = 5.0  # seconds: where the exponential backoff stops growing
RETRY_LOG_FIRST = 3  # failures of an outage logged as warnings, each
RETRY_LOG_INTERVAL = 30.0  # seconds between warnings of an outage after those

# The database or the link to it is away (a call cut by DB_CALL_TIMEOUT too): an outage, logged
# without a traceback.
OUTAGE: tuple[type[BaseException], ...] = (DatabaseUnavailableError, TimeoutError)


def retry_delay(failures: int) -> float:
    """Seconds a worker loop waits after ``failures`` consecutive database errors."""
    return backoff_delay(failures, first=RETRY_BASE_DELAY, longest=RETRY_MAX_DELAY)


class Retry:
    """Consecutive failures of one loop: logs them and the recovery, gives the backoff.

    The first ``RETRY_LOG_FIRST`` failures of an outage are warnings, then one every
    ``RETRY_LOG_INTERVAL`` (the rest at debug): a long outage keeps saying that the process is
    retrying, without a line per attempt.
    """

    def __init__(self, what: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what
        self.failures = 0
        self._clock = clock
        self._warned_at: float | None = None

    def failed(self, exc: BaseException) -> float:
        self.failures += 1
        delay = retry_delay(self.failures)
        now = self._clock()
        loud = (self.failures <= RETRY_LOG_FIRST or self._warned_at is None
                or now - self._warned_at >= RETRY_LOG_INTERVAL)
        if loud:
            self._warned_at = now
        expected = isinstance(exc, OUTAGE)  # no traceback for an outage
        logger.log(
            logging.WARNING if loud else logging.DEBUG,
            "%s failed (%d in a row), retrying in %.2f s: %s", self.what, self.failures, delay,
            describe_error(exc), exc_info=None if expected or not loud else exc,
            extra={"action": "db_retry", "what": self.what, "failures": self.failures},
        )
        return delay

    def succeeded(self) -> None:
        if self.failures:
            logger.info(
                "%s works again after %d failure(s)", self.what, self.failures,
                extra={"action": "db_recovered", "what": self.what},
            )
            self.failures = 0
