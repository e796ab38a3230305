"""The one backoff rule (pgflow/db/backoff.py), as the worker's loops and the listener use it."""

from __future__ import annotations

import pytest

from pgflow.db.backoff import backoff_delay
from pgflow.db.listen import RECONNECT_FIRST_DELAY, RECONNECT_MAX_DELAY
from pgflow.worker._retry import RETRY_BASE_DELAY, RETRY_MAX_DELAY, retry_delay


@pytest.mark.parametrize(("first", "longest"), [
    (RETRY_BASE_DELAY, RETRY_MAX_DELAY), (RECONNECT_FIRST_DELAY, RECONNECT_MAX_DELAY),
])
def test_the_delay_doubles_from_first_to_longest_jittered_in_its_upper_half(
    first: float, longest: float
) -> None:
    for failures in range(1, 60):
        ceiling = min(longest, first * 2 ** (failures - 1))
        for _ in range(20):
            assert ceiling / 2 <= backoff_delay(failures, first=first, longest=longest) <= ceiling


def test_the_listeners_first_wait_is_a_tenth_to_a_fifth_of_a_second() -> None:
    delays = [backoff_delay(1, first=RECONNECT_FIRST_DELAY, longest=RECONNECT_MAX_DELAY)
              for _ in range(100)]
    assert all(0.1 <= d <= 0.2 for d in delays)


def test_a_worker_loop_uses_the_same_rule_with_its_own_bounds() -> None:
    assert all(RETRY_BASE_DELAY / 2 <= retry_delay(1) <= RETRY_BASE_DELAY for _ in range(50))
    assert all(retry_delay(1000) <= RETRY_MAX_DELAY for _ in range(50))
