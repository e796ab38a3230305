"""Whatever a handler returns or raises, through the real worker and ``report_steps``.

The promise (docs/worker.md, "Output" and "Errors"): every JSON value is stored exactly (the
step's output, the run's output, and both events), or its attempt fails with an error naming
the problem (U+0000, NaN/Infinity, an int beyond 64 bits, nesting beyond 254 levels); the
other results of the same report land all the same. An exception's message, whatever its
text, is stored, with U+0000 and lone surrogates made visible.

The values come in batches whose handlers all return in the same instant, so that good and
bad results share one ``report_steps`` call.
"""

from __future__ import annotations

import asyncio
import math
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgflow import Flow
from pgflow.db.store import Store
from pgflow.errors import ValueRejectedError
from pgflow.worker.worker import Worker
from tests.conftest import TEMPLATE_DB, Server
from tests.integration.gateway_harness import drop_database, fresh_database
from tests.threaded import on_a_thread

EXAMPLES = int(os.environ.get("PGFLOW_PROPERTY_EXAMPLES", "60"))
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                           HealthCheck.data_too_large],
)
ORJSON_MAX_DEPTH = 254  # containers inside containers orjson serialises (its documented limit)
INT_RANGE = (-(2**63), 2**64 - 1)  # what orjson serialises: signed or unsigned 64 bits
BATCH_WAIT = 10.0  # seconds a handler waits for the rest of its batch, at most
RUN_WAIT = 20.0  # seconds an example waits for its runs, at most

# -- the flows: each handler looks its value up by key, once all its batch has arrived -------

VALUES: dict[str, Any] = {}  # key -> what the handler returns, or the message it raises
BATCH_SIZES: dict[str, int] = {}
_arrived: dict[str, int] = {}
_all_arrived: dict[str, asyncio.Event] = {}

returns = Flow("prop_returns", max_attempts=1, timeout=30)
raises = Flow("prop_raises", max_attempts=1, timeout=30)


async def _together(batch: str) -> None:
    """Returns once every handler of ``batch`` has been called (on the worker's loop)."""
    _arrived[batch] = _arrived.get(batch, 0) + 1
    arrived = _all_arrived.setdefault(batch, asyncio.Event())
    if _arrived[batch] >= BATCH_SIZES[batch]:
        arrived.set()
    async with asyncio.timeout(BATCH_WAIT):
        await arrived.wait()


@returns.step()
async def echo(input: Any) -> Any:
    await _together(input["run"]["batch"])
    return VALUES[input["run"]["key"]]


@raises.step()
async def throw(input: Any) -> None:
    await _together(input["run"]["batch"])
    raise ValueError(VALUES[input["run"]["key"]])


# -- the oracle --------------------------------------------------------------------------------

def problems(value: Any, depth: int = 0) -> set[str]:
    """Why PGFlow must refuse ``value`` as an output (independently of how it checks); the
    error must name one of them."""
    if isinstance(value, bool) or value is None:
        return set()
    if isinstance(value, int):
        return set() if INT_RANGE[0] <= value <= INT_RANGE[1] else {"exceeds 64-bit range"}
    if isinstance(value, float):
        return set() if math.isfinite(value) else {"which JSON has no number for"}
    if isinstance(value, str):
        return {"U+0000"} if "\x00" in value else set()
    found = {"Recursion limit reached"} if depth >= ORJSON_MAX_DEPTH else set()
    items = list(value.items()) if isinstance(value, dict) else [(None, v) for v in value]
    for key, item in items:
        if key is not None and "\x00" in key:
            found.add("U+0000")
        found |= problems(item, depth + 1)
    return found


def visible(message: str) -> str:
    """The error text docs/worker.md promises for ``raise ValueError(message)``."""
    text = f"ValueError: {message}" if message else "ValueError"
    text = text.replace("\x00", "\\u0000")
    return text.encode("utf-8", "backslashreplace").decode()


def has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(has_float(v) for v in value.values())
    if isinstance(value, list):
        return any(has_float(v) for v in value)
    return False


# -- the strategies ----------------------------------------------------------------------------

any_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=20) | st.lists(
    st.sampled_from(["\x00", "a", "é", "\u2028", "\U0001f600", "\\", '"', "\\u0000"]),
    max_size=8,
).map("".join)
scalars = (
    st.none() | st.booleans() | any_text
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**63) - 1])
    | st.floats(allow_nan=True, allow_infinity=True)
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(any_text, children, max_size=4),
    max_leaves=20,
)


@st.composite
def deep(draw: st.DrawFn) -> Any:
    """One value nested around 254 levels deep: orjson's limit, on either side of it."""
    value: Any = draw(scalars)
    for _ in range(draw(st.integers(ORJSON_MAX_DEPTH - 3, ORJSON_MAX_DEPTH + 3))):
        value = [value] if draw(st.booleans()) else {"k": value}
    return value


outputs = json_values | deep()
messages = any_text | st.text(max_size=40) | st.text(
    st.sampled_from(["\x00", "\ud800", "\udfff", "x"]), max_size=6
)

# -- one worker for the module, on a loop of its own ----------------------------------------


class ThreadedWorker:
    def __init__(self, loop: asyncio.AbstractEventLoop, store: Store) -> None:
        self.loop = loop
        self.store = store

    def call(self, coroutine: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def run_batch(self, flow: str, values: list[Any]) -> list[dict[str, Any]]:
        """Starts one run per value, all in one batch; returns the finished runs, in order."""
        batch = uuid.uuid4().hex
        keys = [f"{batch}-{n}" for n in range(len(values))]
        VALUES.update(zip(keys, values, strict=True))
        BATCH_SIZES[batch] = len(values)
        try:
            return list(self.call(self._run(flow, batch, keys)))
        finally:
            for key in keys:
                del VALUES[key]

    async def _run(self, flow: str, batch: str, keys: list[str]) -> list[dict[str, Any]]:
        run_ids = [await self.store.run_flow(flow, {"batch": batch, "key": k}) for k in keys]
        runs: list[dict[str, Any]] = []
        async with asyncio.timeout(RUN_WAIT):
            for run_id in run_ids:
                while True:
                    run = await self.store.get_run(run_id)
                    if run is not None and run["status"] in ("completed", "failed"):
                        break
                    await asyncio.sleep(0.01)
                events = await self.store.get_run_events(run_id)
                runs.append({**run, "events": events})
        return runs

    def stored_equals(self, run_id: str, value: Any) -> list[bool]:
        """Whether the step's output, the run's and both events' equal ``value`` as jsonb:
        PostgreSQL compares numbers by value, so this is exact whatever the floats."""
        return list(self.call(self._stored_equals(run_id, orjson.dumps(value).decode())))

    async def _stored_equals(self, run_id: str, expected: str) -> list[bool]:
        async with self.store.pool.acquire() as connection:
            row = await connection.fetchrow(
                """
                select (select s.output = $2::text::jsonb from pgflow.step_states as s
                        where s.run_id = $1),
                       (select r.output = $2::text::jsonb from pgflow.runs as r
                        where r.run_id = $1),
                       (select e.payload -> 'output' = $2::text::jsonb from pgflow.run_events as e
                        where e.run_id = $1 and e.event = 'step:completed'),
                       (select e.payload -> 'output' = $2::text::jsonb from pgflow.run_events as e
                        where e.run_id = $1 and e.event = 'run:completed')
                """,
                uuid.UUID(run_id), expected,
            )
        return list(row)


@pytest.fixture(scope="module")
def worker(pg_server: Server, template_url: str) -> Iterator[ThreadedWorker]:
    name = f"pgflow_property_{os.getpid()}_{uuid.uuid4().hex[:6]}"

    async def serve(loop: asyncio.AbstractEventLoop, ready: Callable[[ThreadedWorker], None],
                    stop: asyncio.Event) -> None:
        url = await fresh_database(pg_server.url, TEMPLATE_DB, name)
        try:
            store = await Store.open(url, max_size=4)
            running = Worker(url, [returns, raises], concurrency=16, poll_interval=0.05)
            task = asyncio.create_task(running.run())
            try:
                await running.started.wait()
                ready(ThreadedWorker(loop, store))
                await stop.wait()
            finally:
                running.stop()
                running.stop()  # the second call aborts: nothing of a test is worth a grace
                await task
                await store.close()
        finally:
            await drop_database(pg_server.url, name)

    with on_a_thread(serve, f"worker-{name}") as worker:
        yield worker


# -- the properties ----------------------------------------------------------------------------

@SETTINGS
@given(values=st.lists(outputs, min_size=1, max_size=6))
def test_every_output_is_stored_exactly_or_fails_its_own_attempt_clearly(
    worker: ThreadedWorker, values: list[Any]
) -> None:
    runs = worker.run_batch("prop_returns", values)
    for value, run in zip(values, runs, strict=True):
        why = problems(value)
        if not why:
            assert run["status"] == "completed", (value, run)
            assert worker.stored_equals(run["run_id"], value) == [True] * 4, value
            if not has_float(value):  # floats read back as the nearest double, not exactly
                outputs = [run["output"], run["steps"][0]["output"]]
                outputs += [e["output"] for e in run["events"] if e["event"].endswith("completed")]
                assert outputs == [value] * 4
        else:
            assert run["status"] == "failed", (value, run)
            error = run["steps"][0]["error"]
            assert error.startswith("step 'echo' returned "), error
            assert any(reason in error for reason in why), (why, error)
            assert run["error"] == error


@SETTINGS
@given(texts=st.lists(messages, min_size=1, max_size=6))
def test_every_exception_message_is_stored_with_nul_and_surrogates_made_visible(
    worker: ThreadedWorker, texts: list[str]
) -> None:
    runs = worker.run_batch("prop_raises", texts)
    for text, run in zip(texts, runs, strict=True):
        assert run["status"] == "failed", (text, run)
        assert run["steps"][0]["error"] == visible(text)
        failed = [e for e in run["events"] if e["event"] == "step:failed"]
        assert [e["error"] for e in failed] == [visible(text)]


ASKS = {"slug": "prop_asks", "steps": [{"slug": "ask", "kind": "input"}]}


async def _submit_each(store: Store, values: list[Any]) -> list[tuple[str, Any]]:
    """Submits each value to its own waiting input step: (run_id, True) when applied, or the
    error refusing it."""
    await store.define_flow(ASKS)
    results: list[tuple[str, Any]] = []
    for value in values:
        run_id = await store.run_flow("prop_asks", None)
        try:
            results.append((str(run_id), await store.submit_input(run_id, "ask", value)))
        except ValueRejectedError as error:
            results.append((str(run_id), error))
    return results


@SETTINGS
@given(values=st.lists(outputs, min_size=1, max_size=6))
def test_every_submitted_value_is_stored_exactly_or_refused_clearly(
    worker: ThreadedWorker, values: list[Any]
) -> None:
    # what a Python caller hands submit_input (the Python client, a server's own code): the
    # same oracle as a handler's output, since the value becomes the step's output
    results = worker.call(_submit_each(worker.store, values))
    for value, (run_id, result) in zip(values, results, strict=True):
        why = problems(value)
        if why:
            assert isinstance(result, ValueRejectedError), (value, result)
            assert any(reason in str(result) for reason in why), (why, result)
            continue
        assert result is True, (value, result)
        # the step's output and the run's (its only step) equal the value, as jsonb
        assert worker.stored_equals(run_id, value)[:2] == [True, True], value
