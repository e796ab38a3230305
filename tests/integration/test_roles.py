"""Least privilege with real roles (docs/reference/sql-api.md#roles-and-grants).

An administrator's ``sql/roles.sql`` (run with psql, as the test server's superuser) creates
pgflow_owner, pgflow_worker, pgflow_gateway and pgflow_pruner; pgflow_owner, no superuser and
no CREATEROLE, migrates a fresh database; a ``pgflow worker`` process runs as pgflow_worker and
an in-process gateway as pgflow_gateway, and runs complete with their events on a websocket.
Each role is then shown to be refused what it was not granted. The roles belong to the whole
(throwaway) test server and are left there: databases made later may hold grants to them.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from examples import flows as examples
from pgflow import Client, InputRejectedError
from pgflow.db.migrate import load_migrations, migrate, migrate_url, sql_dir
from pgflow.errors import ConfigurationError
from tests.conftest import Server
from tests.integration.gateway_harness import Follower, running_gateway
from tests.integration.worker_helpers import running_worker
from tests.migration._helpers import fresh_database
from tests.migration.test_schema_matches_migrations import (
    assert_same_schema,
    built_from_schema,
    schema_dump,
)

ROLES_SQL = sql_dir() / "roles.sql"
PUBLIC_FUNCTIONS = sorted(
    p.stem.removeprefix("0100_function_") for p in (sql_dir() / "schema").glob("0100_function_*")
)
DENIED = asyncpg.InsufficientPrivilegeError
TIMEOUT = 20.0  # seconds
# a flow of one input step: a person's answer is its output, no worker needed
ROLE_APPROVAL = {"slug": "role_approval",
                 "steps": [{"slug": "ask", "kind": "input", "schema": {"type": "boolean"}}]}
DATABASES = ("pgflow_roles", "pgflow_roles_unmigrated", "pgflow_roles_migrations",
             "pgflow_roles_schema")


def as_role(url: str, role: str) -> str:
    """``url`` logging in as ``role`` (the test server trusts loopback: no password)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}@{host}"))


def psql_binary(pg_server: Server) -> Path:
    if pg_server.cluster is not None:
        return pg_server.cluster.bin_dir / "psql"
    found = shutil.which("psql")
    assert found is not None, "DATABASE_URL is set and no psql is on PATH: sql/roles.sql needs it"
    return Path(found)


async def run_roles_sql(pg_server: Server, url: str) -> None:
    process = await asyncio.create_subprocess_exec(
        str(psql_binary(pg_server)), "-X", "-q", "-d", url, "-f", str(ROLES_SQL),
        # the test server trusts loopback; a server given by DATABASE_URL gets no known password
        *(f"-v{role}_password={secrets.token_hex(16)}" for role in ("owner", "worker", "gateway")),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, (out + err).decode()


@dataclass
class Deployment:
    url: str  # the superuser's
    applied: list[str]  # what pgflow_owner's migration applied

    def url_as(self, role: str) -> str:
        return as_role(self.url, role)

    async def connect(self, role: str) -> asyncpg.Connection:
        return await asyncpg.connect(self.url_as(role))


@pytest.fixture(scope="module")
async def deployment(pg_server: Server) -> AsyncIterator[Deployment]:
    url = await fresh_database(pg_server, "pgflow_roles")
    await run_roles_sql(pg_server, url)
    applied = await migrate_url(as_role(url, "pgflow_owner"))
    owner = await asyncpg.connect(as_role(url, "pgflow_owner"))
    try:
        for flow in (examples.diamond, examples.flaky):
            await owner.execute("select pgflow.define_flow($1::text::jsonb)",
                                json.dumps(flow.definition()))
    finally:
        await owner.close()
    yield Deployment(url, applied)
    admin = await asyncpg.connect(pg_server.url)
    try:
        for name in DATABASES:
            await admin.execute(f"drop database if exists {name} with (force)")
    finally:
        await admin.close()


async def refused(connection: asyncpg.Connection, sql: str, *args: object) -> str:
    """The message of the privilege error ``sql`` raises (inside a savepoint: the connection
    stays usable)."""
    with pytest.raises(DENIED) as caught:
        async with connection.transaction():
            await connection.execute(sql, *args)
    message: str = caught.value.message
    return message


async def test_the_schema_owner_migrates_without_superuser_and_the_others_find_nothing_to_do(
    deployment: Deployment,
) -> None:
    assert deployment.applied == [m.name for m in load_migrations()]
    admin = await asyncpg.connect(deployment.url)
    try:
        owner = await admin.fetchrow(
            "select rolsuper, rolcreaterole, rolcreatedb from pg_roles"
            " where rolname = 'pgflow_owner'"
        )
        assert tuple(owner) == (False, False, False)
        owners = await admin.fetch(
            """
            select distinct pg_get_userbyid(c.relowner) from pg_class as c
            where c.relnamespace = 'pgflow'::regnamespace
            union select distinct pg_get_userbyid(p.proowner) from pg_proc as p
            where p.pronamespace = 'pgflow'::regnamespace
            union select pg_get_userbyid(n.nspowner) from pg_namespace as n
            where n.nspname = 'pgflow'
            """
        )
        assert [r[0] for r in owners] == ["pgflow_owner"]
    finally:
        await admin.close()
    # `pgflow worker` and `serve` migrate on start: with nothing pending, no DDL, no privilege
    for role in ("pgflow_owner", "pgflow_worker", "pgflow_gateway"):
        assert await migrate_url(deployment.url_as(role)) == [], role


async def test_a_role_that_does_not_own_the_schema_is_told_to_migrate_as_its_owner(
    pg_server: Server, deployment: Deployment,
) -> None:
    url = await fresh_database(pg_server, "pgflow_roles_unmigrated")
    with pytest.raises(ConfigurationError, match=r"cannot migrate as pgflow_worker: .*owner"):
        await migrate_url(as_role(url, "pgflow_worker"))


async def test_a_worker_and_a_gateway_under_their_roles_complete_runs_seen_on_a_websocket(
    deployment: Deployment,
) -> None:
    flows = [examples.diamond, examples.flaky]
    async with (
        running_gateway(deployment.url_as("pgflow_gateway"), flows=flows) as gateway,
        running_worker(deployment.url_as("pgflow_worker"), "--concurrency", "8",
                       flows="examples.flows", env={"PGFLOW_EXAMPLE_DELAY_SCALE": "0.05"}),
    ):
        follower = await Follower.open(gateway.ws_url)
        try:
            run_ids = [await gateway.start_run(f.slug, f.example_input) for f in flows]
            for run_id in run_ids:
                await follower.subscribe(run_id)
            for run_id in run_ids:
                events = await follower.wait_done(run_id, TIMEOUT)
                assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
                assert events[-1]["event"] == "run:completed", events
            # the flaky run's retries: the worker read their backoff (Store.retry_delays)
            flaky = follower.events[run_ids[1]]
            assert sum(e["event"] == "step:retrying" for e in flaky) == examples.FLAKY_FAILURES
            # a late subscriber is replayed from the log (Store.get_run_replay)
            late = await Follower.open(gateway.ws_url)
            try:
                await late.subscribe(run_ids[0])
                assert await late.wait_done(run_ids[0], TIMEOUT) == follower.events[run_ids[0]]
            finally:
                await late.close()
        finally:
            await follower.close()
        run = (await gateway.http.get(f"/runs/{run_ids[0]}")).json()
        assert run["status"] == "completed"
        listed = (await gateway.http.get("/runs", params={"flow_slug": "flaky"})).json()
        assert [r["run_id"] for r in listed["runs"]] == [run_ids[1]]


async def test_the_gateway_starts_runs_but_writes_no_table_and_does_no_workers_work(
    deployment: Deployment,
) -> None:
    gateway = await deployment.connect("pgflow_gateway")
    try:
        run_id = await gateway.fetchval("select pgflow.run_flow('diamond', '{}'::jsonb)")
        assert (await gateway.fetchval("select pgflow.get_run($1)", run_id)) is not None
        assert "step_states" in await refused(
            gateway, "update pgflow.step_states set status = 'completed' where run_id = $1",
            run_id,
        )
        assert "runs" in await refused(gateway, "delete from pgflow.runs")
        assert "run_events" in await refused(gateway, "select * from pgflow.run_events")
        # only the columns its reads need (Store.get_run_replay)
        assert "runs" in await refused(gateway, "select input from pgflow.runs")
        assert "claim_tasks" in await refused(gateway, "select pgflow.claim_tasks('g', 1)")
        assert "report_steps" in await refused(
            gateway, "select pgflow.report_steps('g', '{}', '{}', '{}', '{}', '{}')"
        )
        assert "prune_runs" in await refused(gateway, "select pgflow.prune_runs('0')")
        assert "_grant_roles" in await refused(gateway, "select pgflow._grant_roles()")
    finally:
        await gateway.close()


async def test_the_worker_claims_and_reports_but_cannot_delete_or_start_runs(
    deployment: Deployment,
) -> None:
    gateway = await deployment.connect("pgflow_gateway")
    worker = await deployment.connect("pgflow_worker")
    try:
        await gateway.fetchval("select pgflow.run_flow('diamond', '{}'::jsonb)")
        claimed = await worker.fetch("select * from pgflow.claim_tasks('w', 1000, '{diamond}')")
        assert claimed
        assert "runs" in await refused(worker, "delete from pgflow.runs")
        assert "step_states" in await refused(worker, "update pgflow.step_states set attempt = 9")
        assert "run_flow" in await refused(worker, "select pgflow.run_flow('diamond', '{}')")
        assert "prune_runs" in await refused(worker, "select pgflow.prune_runs('0')")
        released = await worker.fetchval("select pgflow.release_tasks('w')")
        assert released == len(claimed)
    finally:
        await worker.close()
        await gateway.close()


async def test_the_python_client_steers_runs_as_pgflow_gateway(deployment: Deployment) -> None:
    # The Python client's documented role: start with a key, answer an input step (its schema
    # read through get_flow), cancel, retry, follow events; the worker role may do none of it.
    owner = await deployment.connect("pgflow_owner")
    try:
        await owner.execute("select pgflow.define_flow($1::text::jsonb)",
                            json.dumps(ROLE_APPROVAL))
    finally:
        await owner.close()
    async with Client(deployment.url_as("pgflow_gateway")) as client:
        run = await client.start("role_approval", {"n": 1}, idempotency_key="role-key")
        assert (await client.start("role_approval", {"n": 1}, idempotency_key="role-key")
                ).run_id == run.run_id
        with pytest.raises(InputRejectedError):
            await run.submit("ask", "not a boolean")
        assert await run.submit("ask", True)
        assert await run.result(timeout=TIMEOUT) is True
        other = await client.start("role_approval", {"n": 2})
        assert await other.cancel("not needed")
        assert await other.retry()
        assert await other.submit("ask", False)
        assert [e["event"] async for e in other.events()][-3:] == [
            "step:waiting", "step:completed", "run:completed"]
    worker = await deployment.connect("pgflow_worker")
    try:
        for call in ("cancel_run($1)", "retry_run($1)", "submit_input($1, 'ask', 'true')"):
            assert call.split("(")[0] in await refused(worker, f"select pgflow.{call}",
                                                       run.run_id)
    finally:
        await worker.close()


async def test_only_a_member_of_pgflow_pruner_deletes_finished_runs(
    deployment: Deployment,
) -> None:
    admin = await asyncpg.connect(deployment.url)
    try:
        await admin.execute("drop role if exists pgflow_test_pruner")
        await admin.execute("create role pgflow_test_pruner login in role pgflow_pruner")
        pruner = await deployment.connect("pgflow_test_pruner")
        try:
            assert await pruner.fetchval("select pgflow.prune_runs('30 days')") == 0
            assert "runs" in await refused(pruner, "delete from pgflow.runs")
        finally:
            await pruner.close()
    finally:
        await admin.execute("drop role if exists pgflow_test_pruner")
        await admin.close()


async def test_public_executes_no_pgflow_function_even_with_usage_on_the_schema(
    deployment: Deployment,
) -> None:
    admin = await asyncpg.connect(deployment.url)
    try:
        await admin.execute("drop role if exists pgflow_test_nobody")
        await admin.execute("create role pgflow_test_nobody login")
        # A grant an administrator might make: it must still give no function to PUBLIC.
        await admin.execute("grant usage on schema pgflow to public")
        nobody = await deployment.connect("pgflow_test_nobody")
        try:
            message = await refused(nobody, "select pgflow.run_flow('diamond', '{}')")
            assert message == "permission denied for function run_flow"
            message = await refused(nobody, "select pgflow.get_run(gen_random_uuid())")
            assert message == "permission denied for function get_run"
        finally:
            await nobody.close()
        functions = await admin.fetch(
            """
            select p.oid::regprocedure::text as name, p.prosecdef, p.proconfig,
                   has_function_privilege('pgflow_test_nobody', p.oid, 'execute') as public
            from pg_proc as p where p.pronamespace = 'pgflow'::regnamespace
            """
        )
    finally:
        await admin.execute("revoke usage on schema pgflow from public")
        await admin.execute("drop role if exists pgflow_test_nobody")
        await admin.close()
    assert [f["name"] for f in functions if f["public"]] == []
    # Every function pins its search_path; the hot path's also pin the planner to nested
    # loops over index lookups (docs/design/sql-contract.md, "Plan stability"): nothing else
    # may be set.
    planner = {"enable_hashjoin=off", "enable_mergejoin=off", "enable_seqscan=off",
               "plan_cache_mode=force_generic_plan"}
    assert [f["name"] for f in functions
            if "search_path=pg_catalog, pg_temp" not in (f["proconfig"] or [])
            or set(f["proconfig"]) - planner - {"search_path=pg_catalog, pg_temp"}] == []
    definers = sorted(f["name"].split("(")[0].removeprefix("pgflow.")
                      for f in functions if f["prosecdef"])
    assert definers == sorted([*PUBLIC_FUNCTIONS, "_notify_events"])


async def test_a_temporary_table_named_like_a_type_does_not_change_a_security_definer_function(
    deployment: Deployment,
) -> None:
    # With search_path '' the session's pg_temp is searched first: `jsonb` would be this table.
    gateway = await deployment.connect("pgflow_gateway")
    try:
        await gateway.execute("create temporary table jsonb (a int)")
        await gateway.execute("create temporary table text (a int)")
        run_id = await gateway.fetchval(
            "select pgflow.run_flow('diamond', '{\"n\": 1}'::pg_catalog.jsonb)"
        )
        run = await gateway.fetchval("select pgflow.get_run($1)::pg_catalog.text", run_id)
        assert '"input": {"n": 1}' in run
    finally:
        await gateway.close()


async def test_the_grants_of_the_migrations_equal_those_of_the_schema_with_the_roles_present(
    pg_server: Server, deployment: Deployment,
) -> None:
    # tests/migration compares the two without knowing whether the roles exist; here they do.
    url = await fresh_database(pg_server, "pgflow_roles_migrations")
    connection = await asyncpg.connect(url)
    try:
        await migrate(connection)
    finally:
        await connection.close()
    from_migrations = await schema_dump(pg_server, url)
    from_schema = await built_from_schema(pg_server, "pgflow_roles_schema")
    assert "GRANT SELECT(owner) ON TABLE pgflow.runs TO pgflow_gateway;" in from_migrations
    assert "TO pgflow_worker;" in from_migrations
    assert_same_schema(from_migrations, from_schema)


def test_every_public_function_is_granted_to_a_role_in_grant_roles() -> None:
    text = (sql_dir() / "schema" / "0110_function__grant_roles.sql").read_text()
    assert [f for f in PUBLIC_FUNCTIONS if f"pgflow.{f}" not in text] == []
