"""Workers and the gateway's HTTP path through PgBouncer in transaction pooling mode, LISTEN on a
direct connection (docs/worker.md, docs/gateway.md: "Behind PgBouncer").

Each test starts Debian's PgBouncer (``pgbouncer_harness.py``) in front of the session's
PostgreSQL with 5 server connections per database: the worker processes, the gateway and the
test's own store open more client connections than that, so transactions really share servers.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from gateway.config import GatewayConfig
from pgflow.cli import build_parser
from pgflow.db.store import Store
from pgflow.errors import PGFlowError
from tests.conftest import Server
from tests.integration.gateway_harness import TIMEOUT, Follower, log_of, running_gateway, strip
from tests.integration.pgbouncer_harness import PgBouncer, arith, arith_output
from tests.integration.worker_helpers import running_worker, wait_until

RUNS = 120  # runs drained through PgBouncer
CONCURRENT_CALLS = 40  # calls in flight at once against the 5 server connections
ATTEMPTS = 20  # rounds of them before the cache-on test gives up waiting for the failure


@pytest.fixture
def pgbouncer(pg_server: Server) -> Iterator[PgBouncer]:
    with PgBouncer(pg_server.url) as bouncer:
        yield bouncer


def through(bouncer: PgBouncer, db_url: str) -> str:
    """``db_url``'s database, through PgBouncer."""
    return bouncer.url(urlsplit(db_url).path.lstrip("/"))


async def _all_finished(store: Store, run_ids: list[uuid.UUID]) -> bool:
    async with store.pool.acquire() as connection:
        left: int = await connection.fetchval(
            "select count(*) from pgflow.runs where run_id = any($1) and status = 'started'",
            run_ids,
        )
    return left == 0


async def test_two_worker_processes_drain_runs_through_pgbouncer_listening_directly(
    db_url: str, pgbouncer: PgBouncer
) -> None:
    pooled = through(pgbouncer, db_url)
    store = await Store.open(pooled, max_size=4, statement_cache=False)
    options = ("--listen-database-url", db_url, "--pgbouncer", "--concurrency", "20",
               "--poll-interval", "5")  # a slow poll: NOTIFYs (LISTEN, direct) wake the claims
    flows = "tests.integration.pgbouncer_harness"
    try:
        async with running_worker(pooled, *options, flows=flows) as first, \
                running_worker(pooled, *options, flows=flows) as second:
            run_ids = await asyncio.gather(*(store.run_flow("arith", {"n": n})
                                             for n in range(RUNS)))
            await wait_until(lambda: _all_finished(store, run_ids), timeout=60,
                             what="every run to finish")
            assert "prepared statement" not in first.stderr + second.stderr
        runs = await asyncio.gather(*(store.get_run(run_id) for run_id in run_ids))
    finally:
        await store.close()
    for n, run in enumerate(runs):
        assert run is not None
        assert (run["status"], run["output"]) == ("completed", arith_output(n)), run


async def test_the_gateway_serves_http_through_pgbouncer_and_streams_every_event(
    db_url: str, pgbouncer: PgBouncer
) -> None:
    config = GatewayConfig(listen_database_url=db_url, pgbouncer=True)
    async with running_gateway(through(pgbouncer, db_url), flows=[arith], config=config,
                               with_worker=True) as gateway:
        follower = await Follower.open(gateway.ws_url)
        try:
            run_ids = [await gateway.start_run("arith", {"n": n}) for n in range(10)]
            for run_id in run_ids:
                await follower.subscribe(run_id)
            for n, run_id in enumerate(run_ids):
                events = await follower.wait_done(run_id, timeout=TIMEOUT)
                assert strip(events) == await log_of(gateway.runtime.require_store(), run_id)
                response = await gateway.http.get(f"/runs/{run_id}")
                assert response.status_code == 200, response.text
                assert response.json()["output"] == arith_output(n)
            listed = (await gateway.http.get("/runs", params={"limit": 100})).json()["runs"]
            assert {run["run_id"] for run in listed} == set(run_ids)
            assert await gateway.healthy()
        finally:
            await follower.close()


async def _rounds_of_calls(url: str, run_id: uuid.UUID, rounds: int, *,
                           statement_cache: bool) -> None:
    """``rounds`` times, many calls in flight at once over a pool of 8 connections."""
    store = await Store.open(url, max_size=8, statement_cache=statement_cache)
    try:
        for _ in range(rounds):
            # Every call ends before the first error is raised: a pool closed with queries in
            # flight sends cancel requests, which can crash PgBouncer 1.18 ("bad client state").
            results = await asyncio.gather(
                *(store.get_run(run_id) for _ in range(CONCURRENT_CALLS)),
                *(store.ping() for _ in range(CONCURRENT_CALLS)), return_exceptions=True,
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
                assert result is None or result["run_id"] == str(run_id)
    finally:
        await store.close()


async def test_without_the_setting_asyncpgs_named_statements_break_and_with_it_they_do_not(
    db_url: str, pgbouncer: PgBouncer
) -> None:
    pooled = through(pgbouncer, db_url)
    direct = await Store.open(db_url, max_size=1)
    try:
        await direct.define_flow(arith.definition())
        run_id = await direct.run_flow("arith", {"n": 1})
    finally:
        await direct.close()

    # What PgBouncer 1.18 does to asyncpg's statement cache: a statement prepared in one
    # transaction is executed in another, on another server connection.
    with pytest.raises(PGFlowError, match="prepared statement"):
        await _rounds_of_calls(pooled, run_id, ATTEMPTS, statement_cache=True)
    await _rounds_of_calls(pooled, run_id, 3, statement_cache=False)


def test_serve_and_worker_take_the_listen_url_and_pgbouncer_from_options_or_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parser = build_parser()
    for command in (["serve"], ["worker", "--flows", "m"]):
        args = parser.parse_args([*command, "--listen-database-url", "postgresql://direct/db",
                                  "--pgbouncer"])
        assert (args.listen_database_url, args.pgbouncer) == ("postgresql://direct/db", True)
        args = parser.parse_args(command)
        assert (args.listen_database_url, args.pgbouncer) == (None, False)
    monkeypatch.setenv("PGFLOW_LISTEN_DATABASE_URL", "postgresql://env/db")
    monkeypatch.setenv("PGFLOW_PGBOUNCER", "1")
    args = build_parser().parse_args(["serve"])
    config = GatewayConfig.from_args(args)
    assert (config.listen_database_url, config.pgbouncer) == ("postgresql://env/db", True)
