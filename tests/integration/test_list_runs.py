"""GET /runs on a real gateway: filters, keyset paging by cursor, refusals, visibility."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from urllib.parse import quote

import jwt
import pytest

from gateway.config import GatewayConfig
from gateway.errors import BadRequestError
from gateway.runs_query import decode_cursor, encode_cursor
from pgflow.db.store import Completion, Failure, Store
from tests.conftest import TEMPLATE_DB, Server
from tests.integration.gateway_harness import (
    RunningGateway,
    drop_database,
    fresh_database,
    running_gateway,
)

SECRET = "a-test-secret-that-is-long-enough-for-hs256"


def one_step(slug: str) -> dict[str, Any]:
    return {"slug": slug, "max_attempts": 1, "steps": [{"slug": "only"}]}


async def runs_ending(store: Store, slug: str, outcomes: list[str],
                      owner: str | None = None) -> list[str]:
    """Runs of a one-step flow, started in this order, each left 'started', or 'completed' or
    'failed' as ``outcomes`` says; returns their ids."""
    await store.define_flow(one_step(slug))
    run_ids = [await store.run_flow(slug, None, owner=owner) for _ in outcomes]
    tasks = {t.run_id: t for t in await store.claim_tasks("lister", 100, flow_slugs=[slug])}
    done = [Completion(r, "only", 1, None) for r, o in zip(run_ids, outcomes, strict=True)
            if o == "completed"]
    failed = [Failure(r, "only", 1, "boom") for r, o in zip(run_ids, outcomes, strict=True)
              if o == "failed"]
    await store.report("lister", done, failed)
    for run_id, outcome in zip(run_ids, outcomes, strict=True):
        if outcome == "started":
            assert run_id in tasks
    return [str(r) for r in run_ids]


async def ids(gw: RunningGateway, query: str, **kwargs: Any) -> list[str]:
    response = await gw.http.get("/runs?" + query, **kwargs)
    assert response.status_code == 200, response.text
    return [r["run_id"] for r in response.json()["runs"]]


@pytest.fixture(scope="module")
async def gw(pg_server: Server, template_url: str) -> AsyncIterator[RunningGateway]:
    name = f"pgflow_gw_runs_{os.getpid()}"
    url = await fresh_database(pg_server.url, TEMPLATE_DB, name)
    try:
        async with running_gateway(url) as running:
            yield running
    finally:
        await drop_database(pg_server.url, name)


async def test_status_filters_by_one_or_several_run_statuses(gw: RunningGateway) -> None:
    store = gw.runtime.require_store()
    done, failed, going, failed_too = await runs_ending(
        store, "by_status", ["completed", "failed", "started", "failed"])
    assert await ids(gw, "flow_slug=by_status&status=failed") == [failed_too, failed]
    assert await ids(gw, "flow_slug=by_status&status=started") == [going]
    several = [failed_too, going, failed, done]
    assert await ids(gw, "flow_slug=by_status&status=failed,completed,started") == several
    assert await ids(gw, "flow_slug=by_status&status=failed&status=completed") == [
        failed_too, failed, done]
    assert await ids(gw, "flow_slug=by_status") == several


async def test_started_after_and_before_bound_the_runs_by_their_start(
    gw: RunningGateway,
) -> None:
    store = gw.runtime.require_store()
    first, middle, last = await runs_ending(store, "by_time", ["started"] * 3)
    listed = (await gw.http.get("/runs?flow_slug=by_time")).json()["runs"]
    at = {r["run_id"]: datetime.fromisoformat(r["started_at"]) for r in listed}
    after = quote(at[first].isoformat())
    before = at[last].astimezone().strftime("%Y-%m-%dT%H:%M:%S.%f%z")  # another offset
    assert await ids(gw, f"flow_slug=by_time&started_after={after}") == [last, middle]
    assert await ids(gw, f"flow_slug=by_time&started_before={quote(before)}") == [middle, first]
    assert await ids(gw, f"flow_slug=by_time&started_after={after}"
                         f"&started_before={quote(before)}") == [middle]
    utc = at[first].strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert await ids(gw, f"flow_slug=by_time&started_after={utc}") == [last, middle]


async def test_paging_by_next_cursor_lists_every_run_once_newest_first(
    gw: RunningGateway,
) -> None:
    store = gw.runtime.require_store()
    created = await runs_ending(store, "paged", ["started"] * 7)
    async with store.pool.acquire() as connection, connection.transaction():
        # runs started in one transaction share their started_at: the run id breaks the tie
        created += [str(await connection.fetchval("select pgflow.run_flow('paged', null)"))
                    for _ in range(4)]
    pages: list[list[str]] = []
    query = "flow_slug=paged&limit=3"
    while True:
        body = (await gw.http.get("/runs?" + query)).json()
        pages.append([r["run_id"] for r in body["runs"]])
        if len(pages) == 1:
            newer = await runs_ending(store, "paged", ["started"])  # not on later pages
        if body["next_cursor"] is None:
            break
        query = f"flow_slug=paged&limit=3&cursor={body['next_cursor']}"
    assert [len(p) for p in pages] == [3, 3, 3, 2]
    seen = [run_id for page in pages for run_id in page]
    everything = await ids(gw, "flow_slug=paged&limit=1000")
    assert everything[0] == newer[0]
    assert seen == everything[1:]
    assert sorted(seen) == sorted(created)


async def test_a_last_page_that_is_full_has_no_next_cursor(gw: RunningGateway) -> None:
    await runs_ending(gw.runtime.require_store(), "exact", ["started"] * 2)
    body = (await gw.http.get("/runs?flow_slug=exact&limit=2")).json()
    assert len(body["runs"]) == 2
    assert body["next_cursor"] is None
    body = (await gw.http.get("/runs?flow_slug=exact&limit=1")).json()
    assert body["next_cursor"] is not None


BAD_QUERIES = [
    ("unknown parameter", "statuss=failed", "unknown parameter 'statuss'"),
    ("cache buster", "limit=5&_=1712", "unknown parameter '_'"),
    ("unknown status", "status=running", "status 'running' is not a run status"),
    ("one bad status of several", "status=failed,done", "status 'done' is not a run status"),
    ("limit zero", "limit=0", "limit must be an integer from 1 to 1000"),
    ("limit too high", "limit=1001", "limit must be an integer from 1 to 1000"),
    ("limit huge", "limit=" + "9" * 5000, "limit must be an integer from 1 to 1000"),
    ("limit negative", "limit=-1", "limit must be an integer from 1 to 1000"),
    ("limit not a number", "limit=ten", "limit must be an integer from 1 to 1000"),
    ("limit twice", "limit=1&limit=2", "limit is given more than once"),
    ("bad flow filter", "flow_slug=a%20b", "flow_slug 'a b' is not a flow slug"),
    ("time not ISO", "started_after=yesterday", "started_after must be an ISO 8601 time"),
    ("time without zone", "started_before=2026-01-31T12:00:00",
     "started_before must say its time zone"),
    ("plus not escaped", "started_after=2026-01-31T12:00:00+01:00", "send it as %2B"),
    ("cursor garbage", "cursor=not-a-cursor", "cursor is not one this gateway gave"),
    ("cursor too long", "cursor=" + "A" * 500, "cursor is not one this gateway gave"),
]


@pytest.mark.parametrize(("query", "message"), [case[1:] for case in BAD_QUERIES],
                         ids=[case[0] for case in BAD_QUERIES])
async def test_a_bad_query_is_a_400_naming_the_parameter(
    gw: RunningGateway, query: str, message: str
) -> None:
    response = await gw.http.get("/runs?" + query)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "bad_request"
    assert message in error["message"]
    assert await gw.healthy()


async def test_empty_parameters_are_ignored(gw: RunningGateway) -> None:
    response = await gw.http.get("/runs?limit=&flow_slug=&status=&cursor=")
    assert response.status_code == 200, response.text


def test_a_cursor_is_opaque_and_round_trips_exactly() -> None:
    run = {"run_id": str(uuid.uuid4()), "started_at": "2026-11-25T10:00:00.000001+00:00"}
    cursor = encode_cursor(run)
    assert run["run_id"] not in cursor
    moment, run_id = decode_cursor(cursor)
    assert (moment.isoformat(), str(run_id)) == ("2026-11-25T10:00:00.000001+00:00",
                                                 run["run_id"])
    with pytest.raises(BadRequestError):
        decode_cursor(cursor[:-4])


# -- with tokens: the route's visibility rules hold under every filter --------------------------


def token(sub: str, **claims: Any) -> dict[str, str]:
    body = {"sub": sub, "exp": int(time.time()) + 600, **claims}
    return {"Authorization": "Bearer " + jwt.encode(body, SECRET, algorithm="HS256")}


@pytest.fixture(scope="module")
async def auth_gw(pg_server: Server, template_url: str) -> AsyncIterator[RunningGateway]:
    name = f"pgflow_gw_runs_auth_{os.getpid()}"
    url = await fresh_database(pg_server.url, TEMPLATE_DB, name)
    config = GatewayConfig(jwt_secret=SECRET, admin_role="admin")
    try:
        async with running_gateway(url, config=config) as running:
            yield running
    finally:
        await drop_database(pg_server.url, name)


async def test_filters_and_cursors_never_show_another_users_runs(auth_gw: RunningGateway) -> None:
    store = auth_gw.runtime.require_store()
    mine = await runs_ending(store, "owned", ["failed", "completed", "failed"], owner="dora")
    await runs_ending(store, "owned", ["failed", "failed"], owner="erin")
    assert (await auth_gw.http.get("/runs?status=failed")).status_code == 401
    assert await ids(auth_gw, "status=failed", headers=token("dora")) == [mine[2], mine[0]]
    admin = (await auth_gw.http.get("/runs?status=failed&limit=1",
                                    headers=token("root", role="admin"))).json()
    assert len(admin["runs"]) == 1
    # an admin's cursor is a position, not a permission
    assert await ids(auth_gw, f"status=failed&cursor={admin['next_cursor']}",
                     headers=token("dora")) == [mine[2], mine[0]]
    assert await ids(auth_gw, "limit=1000", headers=token("dora")) == mine[::-1]
