"""The worker's retry log during a database outage: it keeps saying that it retries, at a
bounded rate (the first failures each, then one per ``RETRY_LOG_INTERVAL``)."""

from __future__ import annotations

import logging

import pytest

from pgflow.errors import DatabaseUnavailableError
from pgflow.worker._retry import RETRY_LOG_FIRST, RETRY_LOG_INTERVAL, RETRY_MAX_DELAY, Retry


def test_an_outage_is_logged_with_its_count_and_delay_at_a_bounded_rate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    retry = Retry("connecting to the database", clock=lambda: now[0])
    outage = DatabaseUnavailableError("connection refused")
    caplog.set_level(logging.DEBUG, logger="pgflow.worker.worker")
    # Ten minutes of failures, one per RETRY_MAX_DELAY (the backoff's ceiling).
    steps = int(600 / RETRY_MAX_DELAY)
    for _ in range(steps):
        delay = retry.failed(outage)
        assert 0 < delay <= RETRY_MAX_DELAY
        now[0] += RETRY_MAX_DELAY
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # The first few, then one per interval: never silent for longer than the interval.
    every = int(RETRY_LOG_INTERVAL / RETRY_MAX_DELAY)
    expected = [*range(1, RETRY_LOG_FIRST + 1),
                *range(RETRY_LOG_FIRST + every, steps + 1, every)]
    assert [int(w.split("(")[1].split()[0]) for w in warnings] == expected
    assert warnings[0].startswith("connecting to the database failed (1 in a row), retrying in ")
    assert all("connection refused" in w for w in warnings)
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(debug) + len(warnings) == steps
    assert all(r.exc_info is None for r in caplog.records)  # an outage is no traceback
    caplog.clear()
    retry.succeeded()
    assert [r.getMessage() for r in caplog.records] == [
        f"connecting to the database works again after {steps} failure(s)"]
    retry.failed(outage)  # a new outage is news again
    assert caplog.records[-1].levelno == logging.WARNING
