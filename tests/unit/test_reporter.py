"""The worker's reporter against a fake store: what it retries, what it bisects, and the retry
timers it asks for from the delays the engine set. No database."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any, cast

import pytest

from pgflow.db.store import Completion, Failure, Store
from pgflow.errors import DatabaseUnavailableError, TransientDatabaseError, ValueRejectedError
from pgflow.worker._reporter import Reporter, is_transient

RUN = uuid.uuid4()


class FakeStore:
    """Refuses a batch holding a completion whose output is "bad"; applies the rest."""

    def __init__(self, outage: BaseException | None = None) -> None:
        self.outage = outage
        self.calls: list[list[str]] = []
        self.applied: list[Completion | Failure] = []

    async def report(self, worker_id: str, completions: Iterable[Completion] = (),
                     failures: Iterable[Failure] = ()) -> tuple[list[bool], list[bool]]:
        done, failed = list(completions), list(failures)
        self.calls.append([i.step_slug for i in (*done, *failed)])
        if self.outage is not None:
            raise self.outage
        if any(c.output == "bad" for c in done):
            cause = ValueError("unsupported Unicode escape sequence")
            raise ValueRejectedError(str(cause), sqlstate="22P05") from cause
        self.applied += [*done, *failed]
        return [True] * len(done), [True] * len(failed)

    async def retry_delays(self, failures: Sequence[Failure]) -> list[float | None]:
        return [2.5 if f.step_slug.startswith("retry") else None for f in failures]


def completion(slug: str, output: Any = 1) -> Completion:
    return Completion(RUN, slug, 1, output)


@pytest.mark.parametrize(("exc", "transient"), [
    (DatabaseUnavailableError(), True), (TransientDatabaseError(), True), (TimeoutError(), True),
    (ValueRejectedError(), False), (RuntimeError("a bug"), False),
])
def test_only_an_outage_or_a_transient_refusal_sends_the_batch_back(
    exc: BaseException, transient: bool
) -> None:
    assert is_transient(exc) is transient


async def test_a_refused_value_costs_only_its_own_attempt() -> None:
    store = FakeStore()
    reporter = Reporter("w", lambda delay: None)
    batch = [completion(f"s{n}", "bad" if n == 5 else n) for n in range(8)]
    assert await reporter.report(cast(Store, store), list(batch)) is None
    assert reporter.refused == 1
    applied = {i.step_slug: i for i in store.applied}
    assert len(applied) == 8
    refused = applied["s5"]
    assert isinstance(refused, Failure)
    # the database's own words, not the name of our error class
    assert refused.error == ("PostgreSQL refused the output of step 's5': "
                             "ValueError: unsupported Unicode escape sequence")


async def test_an_outage_puts_the_batch_back_in_order() -> None:
    store = FakeStore(outage=DatabaseUnavailableError("gone"))
    reporter = Reporter("w", lambda delay: None)
    batch = [completion(f"s{n}") for n in range(4)]
    error = await reporter.report(cast(Store, store), list(batch))
    assert isinstance(error, DatabaseUnavailableError)
    assert len(reporter) == 4
    store.outage = None
    assert await reporter.report_all(cast(Store, store)) is None
    assert [i.step_slug for i in store.applied] == ["s0", "s1", "s2", "s3"]


async def test_an_applied_retry_asks_for_a_timer_of_the_engines_delay() -> None:
    timers: list[float] = []
    reporter = Reporter("w", timers.append)
    batch: list[Completion | Failure] = [
        completion("done"), Failure(RUN, "retry_me", 1, "boom"), Failure(RUN, "last", 3, "boom"),
    ]
    assert await reporter.report(cast(Store, FakeStore()), batch) is None
    assert timers == [2.5]
