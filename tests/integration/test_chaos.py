"""The chaos soak of bench/chaos.py, short: real worker and gateway processes, every fault kind
injected (worker SIGKILL, gateway LISTEN backends terminated, PostgreSQL restarted, client
sockets aborted), then every guarantee checked end to end (docs/guarantees.md, 1 and 3).

Below it, the regression tests of what the soak found (gateway/store.py: a PostgreSQL restart
made POST /rpc/run_flow answer 500).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

CHAOS_PATH = Path(__file__).resolve().parents[2] / "bench" / "chaos.py"


def load_chaos() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pgflow_bench_chaos", CHAOS_PATH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
async def test_chaos_soak_loses_nothing_and_ends_every_run() -> None:
    chaos = load_chaos()
    options = chaos.Options(
        seconds=14, rate=3, workers=3, subscribers=12, followers_per_run=3, lease=2.0,
        fault_min=1.0, fault_max=1.6, drain_timeout=30, seed=8, quiet=True,
        round_robin_faults=True,
    )
    result = await chaos.run_chaos(options)
    chaos.report(result)

    # every fault kind really happened, twice
    assert result["fault_worker_sigkill"] >= 2, result
    assert result["fault_listener_backends_terminated"] >= 2, result  # one per gateway at least
    assert result["fault_postgres_restart"] >= 1, result
    assert result["fault_function_sigkill"] >= 1, result  # the HTTP steps' function, mid-call
    assert result["fault_client_sockets_dropped"] >= 2, result
    # load ran and was checked
    assert result["runs_started"] >= 20, result
    # and runs were steered through the gateways meanwhile: cancelled, and answered
    assert result.get("cancels_200", 0) >= 1, result
    assert result.get("inputs_200", 0) >= 1, result
    assert result.get("approval_completed", 0) >= 1, result
    # a map step and an HTTP step whose function misbehaves (bench/chaos_function.py)
    assert result.get("chaos_pipe_completed", 0) >= 1, result
    assert result["streams_checked"] == 3 * result["runs_started"], result
    # the guarantees
    assert result["runs_not_terminal"] == 0, result
    assert result["tasks_left_leased"] == 0, result
    assert result.get("events_lost", 0) == 0, result
    assert result.get("events_duplicated", 0) == 0, result
    assert result.get("events_out_of_order", 0) == 0, result
    assert result.get("events_mismatched", 0) == 0, result
    assert result["events_received"] == result["events_expected"], result
    assert result["gateways_exited"] == 0, result
    assert result["workers_exited_unexpectedly"] == 0, result
    assert result["failed_checks"] == [], result
    assert result["ok"], result


# -- regression: found by the soak ------------------------------------------------------------


async def test_a_connection_lost_after_the_query_committed_does_not_fail_the_call(
    db_url: str,
) -> None:
    """A PostgreSQL restart can cut a pooled connection just after its query committed; the
    pool then fails to reset it on release (asyncpg raises InternalClientError "cannot switch
    to state 15; another operation (2) is in progress"). That escaped Store as an unknown
    error: POST /rpc/run_flow answered 500 for a run that had been created. Now the release
    failure is the pool's business (it drops the connection), and the call returns its result.
    """
    import asyncpg
    from asyncpg.exceptions import _base

    from pgflow.db.connection import init_connection
    from pgflow.db.store import Store

    failures = []

    async def reset_fails_once(connection: asyncpg.Connection) -> None:
        if not failures:
            failures.append(connection)
            raise _base.InternalClientError(
                "cannot switch to state 15; another operation (2) is in progress")

    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2, init=init_connection,
                                     reset=reset_fails_once)
    store = Store(pool)
    try:
        await store.define_flow({"slug": "one", "steps": [{"slug": "a"}]})  # reset fails here
        assert len(failures) == 1
        run_id = await store.run_flow("one", {"x": 1})  # the pool has a connection again
        run = await store.get_run(run_id)
        assert run is not None
        assert run["status"] == "started"
        flows = await pool.fetchval("select count(*) from pgflow.flows where flow_slug = 'one'")
        assert flows == 1
    finally:
        await store.close()


def test_a_connection_left_mid_operation_by_a_restart_is_unavailable_not_a_crash() -> None:
    """The other face of the same restart: the next query on such a connection fails before it
    is sent, with InternalClientError "cannot switch to state 12; another operation (2) is in
    progress". Nothing ran, so it is `unavailable` (HTTP 503, retry), not an `internal` 500.
    """
    from asyncpg.exceptions import InternalClientError

    from gateway.wire import error_status
    from pgflow.db.translation import translate_errors
    from pgflow.errors import DatabaseUnavailableError

    with pytest.raises(DatabaseUnavailableError) as raised, translate_errors():
        raise InternalClientError("cannot switch to state 12; another operation (2) is in progress")
    assert error_status(raised.value) == ("unavailable", 503)
