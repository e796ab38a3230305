"""Steering runs over HTTP on a real gateway: cancel, input steps, retry, idempotent starts.

docs/reference/http.md: ``POST /runs/{run_id}/cancel``, ``POST /runs/{run_id}/steps/{step_slug}
/input``, ``POST /runs/{run_id}/retry`` and ``Idempotency-Key`` on ``POST /rpc/run_flow``.
Tokens are on (HS256) so that the owner rules can be checked; public flows and runs without an
owner need none.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest

from gateway.config import GatewayConfig
from pgflow.db.store import Completion, Failure, Store
from tests.conftest import TEMPLATE_DB, Server
from tests.integration.gateway_harness import (
    CHAIN,
    RunningGateway,
    drop_database,
    fresh_database,
    running_gateway,
)

SECRET = "a-test-secret-that-is-long-enough-for-hs256"
WORKER = "steer-test-driver"
SCHEMA = {
    "type": "object",
    "required": ["ok"],
    "properties": {"ok": {"type": "boolean"}, "note": {"type": "string", "maxLength": 20}},
    "additionalProperties": False,
}
APPROVAL = {"slug": "approval", "steps": [
    {"slug": "prepare"},
    {"slug": "approve", "kind": "input", "depends_on": ["prepare"], "schema": SCHEMA},
    {"slug": "ship", "depends_on": ["approve"]},
]}
# An input step with no dependencies waits from the start; `true` takes any value.
ANYTHING = {"slug": "anything", "steps": [{"slug": "say", "kind": "input", "schema": True}]}
FRAGILE = {"slug": "fragile", "steps": [{"slug": "only", "max_attempts": 1}]}
PRIVATE = {"slug": "hidden", "steps": [{"slug": "only"}]}
# define_flow checks that a schema is an object or a boolean, not that JSON Schema takes it.
BROKEN = {"slug": "broken", "steps": [{"slug": "ask", "kind": "input",
                                        "schema": {"type": "nope"}}]}


def token(sub: str = "alice", **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 600, **claims}, SECRET, "HS256")


def bearer(sub: str, **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(sub, **claims)}"}


ADMIN = bearer("root", role="admin")


@pytest.fixture(scope="module")
async def gw(pg_server: Server, template_url: str) -> AsyncIterator[RunningGateway]:
    name = f"pgflow_gw_steer_{os.getpid()}"
    url = await fresh_database(pg_server.url, TEMPLATE_DB, name)
    config = GatewayConfig(jwt_secret=SECRET, admin_role="admin",
                           private_flows=frozenset({"hidden"}))
    try:
        async with running_gateway(url, config=config) as running:
            store = running.runtime.require_store()
            for definition in (CHAIN, APPROVAL, ANYTHING, FRAGILE, PRIVATE, BROKEN):
                await store.define_flow(definition)
            yield running
    finally:
        await drop_database(pg_server.url, name)


def store_of(gw: RunningGateway) -> Store:
    return gw.runtime.require_store()


async def run_status(gw: RunningGateway, run_id: str) -> str:
    run = await store_of(gw).get_run(uuid.UUID(run_id))
    assert run is not None
    status: str = run["status"]
    return status


async def step_status(gw: RunningGateway, run_id: str, step_slug: str) -> str:
    run = await store_of(gw).get_run(uuid.UUID(run_id))
    assert run is not None
    (step,) = [s for s in run["steps"] if s["step_slug"] == step_slug]
    status: str = step["status"]
    return status


async def complete(gw: RunningGateway, run_id: str, output: Any = None) -> list[str]:
    """Completes every ready task of the run's flow (other runs' too: the module's runs share
    the database); the steps of ``run_id`` it completed."""
    store = store_of(gw)
    run = await store.get_run(uuid.UUID(run_id))
    assert run is not None
    tasks = await store.claim_tasks(WORKER, 1000, flow_slugs=[run["flow_slug"]])
    await store.report(WORKER, [Completion(t.run_id, t.step_slug, t.attempt, output)
                                for t in tasks])
    return [t.step_slug for t in tasks if str(t.run_id) == run_id]


async def fail(gw: RunningGateway, run_id: str) -> None:
    """Fails the run's ready steps (and any other ready ones of its flow)."""
    store = store_of(gw)
    run = await store.get_run(uuid.UUID(run_id))
    assert run is not None
    tasks = await store.claim_tasks(WORKER, 1000, flow_slugs=[run["flow_slug"]])
    assert run_id in {str(t.run_id) for t in tasks}
    await store.report(WORKER, failures=[Failure(t.run_id, t.step_slug, t.attempt, "boom")
                                         for t in tasks])
    assert await run_status(gw, run_id) == "failed"


async def waiting_approval(gw: RunningGateway, headers: dict[str, str] | None = None) -> str:
    """A run of `approval` whose `approve` step waits for its value."""
    run_id = await gw.start_run("approval", {"order": 7}, headers=headers)
    assert await complete(gw, run_id, {"total": 42}) == ["prepare"]
    assert await step_status(gw, run_id, "approve") == "waiting"
    return run_id


async def count_runs(gw: RunningGateway, flow_slug: str) -> int:
    runs = await store_of(gw).list_runs(max_runs=10_000, flow_slug=flow_slug)
    return len(runs)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert error["message"]
    return error


# -- cancel -------------------------------------------------------------------------------------


async def test_cancel_ends_the_run_with_its_reason(gw: RunningGateway) -> None:
    run_id = await gw.start_run("chain")
    response = await gw.http.post(f"/runs/{run_id}/cancel", json={"reason": "changed my mind"})
    assert response.status_code == 200, response.text
    assert response.json() == {"run_id": run_id, "status": "cancelled"}
    snapshot = (await gw.http.get(f"/runs/{run_id}")).json()
    assert snapshot["status"] == "cancelled"
    assert snapshot["cancel_reason"] == "changed my mind"
    assert snapshot["cancelled_at"] is not None
    assert {s["status"] for s in snapshot["steps"]} == {"cancelled"}
    # a cancelled run's steps are never handed to a worker
    assert await complete(gw, run_id) == []
    events = [e["event"] for e in await store_of(gw).get_run_events(uuid.UUID(run_id))]
    assert events[-1] == "run:cancelled"
    assert events.count("step:cancelled") == 3


async def test_a_step_running_when_the_run_is_cancelled_reports_in_vain(
    gw: RunningGateway,
) -> None:
    run_id = await gw.start_run("chain")
    store = store_of(gw)
    claimed = await store.claim_tasks(WORKER, 1000, flow_slugs=["chain"])
    tasks = [t for t in claimed if str(t.run_id) == run_id]
    assert [t.step_slug for t in tasks] == ["a"]
    assert (await gw.http.post(f"/runs/{run_id}/cancel")).status_code == 200
    applied, _ = await store.report(WORKER, [Completion(t.run_id, t.step_slug, t.attempt, "late")
                                             for t in claimed])
    assert [ok for ok, t in zip(applied, claimed, strict=True) if t in tasks] == [False]
    snapshot = (await gw.http.get(f"/runs/{run_id}")).json()
    assert snapshot["status"] == "cancelled"
    assert snapshot["steps"][0]["status"] == "cancelled"


@pytest.mark.parametrize("kwargs", [
    {}, {"content": b""}, {"content": b"  \n"}, {"json": {}}, {"json": {"reason": None}},
], ids=["no body", "empty", "blank", "empty object", "null reason"])
async def test_cancel_needs_no_reason(gw: RunningGateway, kwargs: dict[str, Any]) -> None:
    run_id = await gw.start_run("chain")
    response = await gw.http.post(f"/runs/{run_id}/cancel", **kwargs)
    assert response.status_code == 200, response.text
    snapshot = (await gw.http.get(f"/runs/{run_id}")).json()
    assert (snapshot["status"], snapshot["cancel_reason"]) == ("cancelled", None)


async def test_cancelling_an_ended_run_is_a_conflict(gw: RunningGateway) -> None:
    done = await gw.start_run("chain")
    for step in ("a", "b", "c"):
        assert await complete(gw, done) == [step]
    assert await run_status(gw, done) == "completed"
    assert_error(await gw.http.post(f"/runs/{done}/cancel"), 409, "conflict")
    assert await run_status(gw, done) == "completed"

    failed = await gw.start_run("fragile")
    await fail(gw, failed)
    assert_error(await gw.http.post(f"/runs/{failed}/cancel"), 409, "conflict")

    cancelled = await gw.start_run("chain")
    assert (await gw.http.post(f"/runs/{cancelled}/cancel")).status_code == 200
    assert_error(await gw.http.post(f"/runs/{cancelled}/cancel", json={"reason": "again"}),
                 409, "conflict")
    snapshot = (await gw.http.get(f"/runs/{cancelled}")).json()
    assert snapshot["cancel_reason"] is None  # the second call changed nothing


async def test_concurrent_cancels_one_wins(gw: RunningGateway) -> None:
    run_id = await gw.start_run("chain")
    responses = await asyncio.gather(*(gw.http.post(f"/runs/{run_id}/cancel",
                                                    json={"reason": f"r{i}"})
                                       for i in range(8)))
    assert sorted(r.status_code for r in responses) == [200] + [409] * 7
    winner = next(i for i, r in enumerate(responses) if r.status_code == 200)
    assert (await gw.http.get(f"/runs/{run_id}")).json()["cancel_reason"] == f"r{winner}"
    events = [e["event"] for e in await store_of(gw).get_run_events(uuid.UUID(run_id))]
    assert events.count("run:cancelled") == 1


BAD_CANCEL: list[tuple[str, dict[str, Any], str]] = [
    ("reason not a string", {"json": {"reason": 1}}, "bad_request"),
    ("reason an object", {"json": {"reason": {"x": 1}}}, "bad_request"),
    ("unknown field", {"json": {"reason": "x", "force": True}}, "bad_request"),
    ("not an object", {"json": ["stop"]}, "bad_request"),
    ("a string body", {"json": "stop"}, "bad_request"),
    ("null body", {"content": b"null"}, "bad_request"),
    ("reason too long", {"json": {"reason": "x" * 1001}}, "bad_request"),
    ("reason with U+0000", {"json": {"reason": "a\x00b"}}, "bad_request"),
    ("malformed JSON", {"content": b'{"reason": '}, "bad_json"),
]


@pytest.mark.parametrize(("kwargs", "code"), [c[1:] for c in BAD_CANCEL],
                         ids=[c[0] for c in BAD_CANCEL])
async def test_a_bad_cancel_body_is_refused_and_cancels_nothing(
    gw: RunningGateway, kwargs: dict[str, Any], code: str
) -> None:
    run_id = await gw.start_run("chain")
    assert_error(await gw.http.post(f"/runs/{run_id}/cancel", **kwargs), 400, code)
    assert await run_status(gw, run_id) == "started"
    assert await gw.healthy()


async def test_a_reason_of_the_limit_is_kept(gw: RunningGateway) -> None:
    run_id = await gw.start_run("chain")
    reason = "é" * 1000
    assert (await gw.http.post(f"/runs/{run_id}/cancel",
                               json={"reason": reason})).status_code == 200
    assert (await gw.http.get(f"/runs/{run_id}")).json()["cancel_reason"] == reason


# -- routes: unknown runs, bad ids, wrong methods ------------------------------------------------

RANDOM = str(uuid.uuid4())


@pytest.mark.parametrize(("path", "kwargs", "status", "code"), [
    (f"/runs/{RANDOM}/cancel", {}, 404, "not_found"),
    (f"/runs/{RANDOM}/retry", {}, 404, "not_found"),
    (f"/runs/{RANDOM}/steps/approve/input", {"json": {"value": {"ok": True}}}, 404, "not_found"),
    ("/runs/not-a-uuid/cancel", {}, 400, "bad_request"),
    ("/runs/not-a-uuid/retry", {}, 400, "bad_request"),
    ("/runs/not-a-uuid/steps/approve/input", {"json": {"value": 1}}, 400, "bad_request"),
], ids=["cancel", "retry", "input", "cancel bad id", "retry bad id", "input bad id"])
async def test_unknown_runs_and_bad_ids(gw: RunningGateway, path: str, kwargs: dict[str, Any],
                                        status: int, code: str) -> None:
    assert_error(await gw.http.post(path, **kwargs), status, code)


@pytest.mark.parametrize("path", [f"/runs/{RANDOM}/cancel", f"/runs/{RANDOM}/retry",
                                  f"/runs/{RANDOM}/steps/approve/input"])
async def test_the_steering_routes_take_only_post(gw: RunningGateway, path: str) -> None:
    assert_error(await gw.http.get(path), 405, "method_not_allowed")


# -- input steps --------------------------------------------------------------------------------


async def test_a_submitted_value_completes_the_step_and_feeds_its_dependents(
    gw: RunningGateway,
) -> None:
    run_id = await waiting_approval(gw)
    response = await gw.http.post(f"/runs/{run_id}/steps/approve/input",
                                  json={"value": {"ok": True, "note": "ship it"}})
    assert response.status_code == 200, response.text
    assert response.json() == {"run_id": run_id, "step_slug": "approve", "status": "completed"}
    snapshot = (await gw.http.get(f"/runs/{run_id}")).json()
    approve = next(s for s in snapshot["steps"] if s["step_slug"] == "approve")
    assert (approve["status"], approve["output"]) == ("completed", {"ok": True, "note": "ship it"})
    store = store_of(gw)
    claimed = await store.claim_tasks(WORKER, 1000, flow_slugs=["approval"])
    await store.report(WORKER, [Completion(t.run_id, t.step_slug, t.attempt, "sent")
                                for t in claimed])
    tasks = [t for t in claimed if str(t.run_id) == run_id]
    assert [t.step_slug for t in tasks] == ["ship"]
    assert tasks[0].input["approve"] == {"ok": True, "note": "ship it"}
    assert await run_status(gw, run_id) == "completed"


@pytest.mark.parametrize("value", [None, 0, "text", [1, 2], {"deep": {"er": [True]}}])
async def test_a_schema_of_true_takes_any_json(gw: RunningGateway, value: Any) -> None:
    run_id = await gw.start_run("anything")
    assert await step_status(gw, run_id, "say") == "waiting"
    response = await gw.http.post(f"/runs/{run_id}/steps/say/input", json={"value": value})
    assert response.status_code == 200, response.text
    snapshot = (await gw.http.get(f"/runs/{run_id}")).json()
    assert (snapshot["status"], snapshot["steps"][0]["output"]) == ("completed", value)


async def test_a_value_that_fails_the_schema_is_refused_with_its_errors(
    gw: RunningGateway,
) -> None:
    run_id = await waiting_approval(gw)
    response = await gw.http.post(f"/runs/{run_id}/steps/approve/input",
                                  json={"value": {"ok": "yes", "note": "x" * 21, "extra": 1}})
    error = assert_error(response, 400, "invalid_input")
    assert [e["path"] for e in error["errors"]] == ["", "/note", "/ok"]
    assert all(set(e) == {"path", "message"} and e["message"] for e in error["errors"])
    assert "extra" in error["errors"][0]["message"]
    missing = assert_error(await gw.http.post(f"/runs/{run_id}/steps/approve/input",
                                              json={"value": {}}), 400, "invalid_input")
    assert missing["errors"] == [{"path": "", "message": "'ok' is a required property"}]
    not_object = assert_error(await gw.http.post(f"/runs/{run_id}/steps/approve/input",
                                                 json={"value": None}), 400, "invalid_input")
    assert len(not_object["errors"]) == 1
    # refused values leave the step waiting for a good one
    assert await step_status(gw, run_id, "approve") == "waiting"
    good = await gw.http.post(f"/runs/{run_id}/steps/approve/input",
                              json={"value": {"ok": False}})
    assert good.status_code == 200, good.text


async def test_a_step_that_is_not_waiting_is_a_conflict(gw: RunningGateway) -> None:
    run_id = await gw.start_run("approval", {"order": 1})
    # its dependency has not completed: not waiting yet
    assert await step_status(gw, run_id, "approve") == "created"
    assert_error(await gw.http.post(f"/runs/{run_id}/steps/approve/input",
                                    json={"value": {"ok": True}}), 409, "conflict")
    assert await complete(gw, run_id) == ["prepare"]
    assert (await gw.http.post(f"/runs/{run_id}/steps/approve/input",
                               json={"value": {"ok": True}})).status_code == 200
    # already completed
    assert_error(await gw.http.post(f"/runs/{run_id}/steps/approve/input",
                                    json={"value": {"ok": False}}), 409, "conflict")
    run = await store_of(gw).get_run(uuid.UUID(run_id))
    assert run is not None
    assert next(s for s in run["steps"] if s["step_slug"] == "approve")["output"] == {"ok": True}


async def test_a_cancelled_runs_input_step_takes_no_value(gw: RunningGateway) -> None:
    run_id = await waiting_approval(gw)
    assert (await gw.http.post(f"/runs/{run_id}/cancel")).status_code == 200
    assert_error(await gw.http.post(f"/runs/{run_id}/steps/approve/input",
                                    json={"value": {"ok": True}}), 409, "conflict")
    assert await run_status(gw, run_id) == "cancelled"


async def test_a_step_that_is_not_an_input_step_is_a_conflict(gw: RunningGateway) -> None:
    run_id = await gw.start_run("approval", {"order": 1})
    before = (await gw.http.get(f"/runs/{run_id}")).json()
    for step in ("prepare", "ship"):
        error = assert_error(await gw.http.post(f"/runs/{run_id}/steps/{step}/input",
                                                json={"value": 1}), 409, "conflict")
        assert "not an input step" in error["message"]
    assert (await gw.http.get(f"/runs/{run_id}")).json() == before


@pytest.mark.parametrize("step", ["nope", "APPROVE", "appr%C3%B6ve", "a" * 300])
async def test_an_unknown_step_is_not_found(gw: RunningGateway, step: str) -> None:
    run_id = await waiting_approval(gw)
    assert_error(await gw.http.post(f"/runs/{run_id}/steps/{step}/input",
                                    json={"value": {"ok": True}}), 404, "not_found")


BAD_INPUT_BODY: list[tuple[str, dict[str, Any], str]] = [
    ("no value", {"json": {}}, "bad_request"),
    ("value misspelt", {"json": {"valeu": {"ok": True}}}, "bad_request"),
    ("extra field", {"json": {"value": {"ok": True}, "step": "approve"}}, "bad_request"),
    ("not an object", {"json": [{"ok": True}]}, "bad_request"),
    ("U+0000 in a string", {"json": {"value": {"ok": True, "note": "a\x00"}}}, "bad_request"),
    ("U+0000 in a key", {"json": {"value": {"ok\x00": True}}}, "bad_request"),
    ("empty body", {"content": b""}, "bad_json"),
    ("malformed JSON", {"content": b'{"value": '}, "bad_json"),
    ("nested too deep", {"content": b'{"value": ' + b"[" * 70 + b"]" * 70 + b"}"},
     "bad_request"),
]


@pytest.mark.parametrize(("kwargs", "code"), [c[1:] for c in BAD_INPUT_BODY],
                         ids=[c[0] for c in BAD_INPUT_BODY])
async def test_a_bad_input_body_is_refused(gw: RunningGateway, kwargs: dict[str, Any],
                                           code: str) -> None:
    run_id = await waiting_approval(gw)
    assert_error(await gw.http.post(f"/runs/{run_id}/steps/approve/input", **kwargs), 400, code)
    assert await step_status(gw, run_id, "approve") == "waiting"


async def test_an_input_over_the_body_limit_is_too_large(gw: RunningGateway) -> None:
    run_id = await gw.start_run("anything")
    big = {"value": "x" * (gw.runtime.config.max_body_bytes + 1)}
    assert_error(await gw.http.post(f"/runs/{run_id}/steps/say/input", json=big),
                 413, "too_large")
    assert await step_status(gw, run_id, "say") == "waiting"


async def test_an_unusable_stored_schema_is_the_flows_fault(gw: RunningGateway) -> None:
    run_id = await gw.start_run("broken")
    assert await step_status(gw, run_id, "ask") == "waiting"
    error = assert_error(await gw.http.post(f"/runs/{run_id}/steps/ask/input",
                                            json={"value": 1}), 500, "internal")
    assert "schema" in error["message"]
    assert "'ask'" in error["message"]
    assert await step_status(gw, run_id, "ask") == "waiting"
    assert await gw.healthy()


async def test_concurrent_submits_one_wins(gw: RunningGateway) -> None:
    for _ in range(3):
        run_id = await waiting_approval(gw)
        first, second = await asyncio.gather(
            gw.http.post(f"/runs/{run_id}/steps/approve/input", json={"value": {"ok": True}}),
            gw.http.post(f"/runs/{run_id}/steps/approve/input", json={"value": {"ok": False}}),
        )
        assert sorted([first.status_code, second.status_code]) == [200, 409]
        loser = second if first.status_code == 200 else first
        assert loser.json()["error"]["code"] == "conflict"
        winner_value = {"ok": first.status_code == 200}
        run = await store_of(gw).get_run(uuid.UUID(run_id))
        assert run is not None
        approve = next(s for s in run["steps"] if s["step_slug"] == "approve")
        assert approve["output"] == winner_value
        events = await store_of(gw).get_run_events(uuid.UUID(run_id))
        assert [e["event"] for e in events if e["step_slug"] == "approve"] == [
            "step:waiting", "step:completed"]


# -- retry --------------------------------------------------------------------------------------


async def test_retry_starts_a_failed_run_again(gw: RunningGateway) -> None:
    run_id = await gw.start_run("fragile")
    await fail(gw, run_id)
    response = await gw.http.post(f"/runs/{run_id}/retry")
    assert response.status_code == 200, response.text
    assert response.json() == {"run_id": run_id, "status": "started"}
    assert await run_status(gw, run_id) == "started"
    # running now: not retryable
    assert_error(await gw.http.post(f"/runs/{run_id}/retry"), 409, "conflict")
    assert await complete(gw, run_id, "fine") == ["only"]
    assert await run_status(gw, run_id) == "completed"
    assert_error(await gw.http.post(f"/runs/{run_id}/retry"), 409, "conflict")
    events = [e["event"] for e in await store_of(gw).get_run_events(uuid.UUID(run_id))]
    assert events.count("run:retried") == 1


async def test_retry_resumes_a_cancelled_run(gw: RunningGateway) -> None:
    run_id = await waiting_approval(gw)
    assert (await gw.http.post(f"/runs/{run_id}/cancel")).status_code == 200
    response = await gw.http.post(f"/runs/{run_id}/retry", json={})
    assert response.status_code == 200, response.text
    assert await run_status(gw, run_id) == "started"
    # the completed step is kept; the input step waits again
    assert await step_status(gw, run_id, "prepare") == "completed"
    assert await step_status(gw, run_id, "approve") == "waiting"
    assert (await gw.http.post(f"/runs/{run_id}/steps/approve/input",
                               json={"value": {"ok": True}})).status_code == 200


@pytest.mark.parametrize(("kwargs", "code"), [
    ({"json": {"force": True}}, "bad_request"),
    ({"json": [1]}, "bad_request"),
    ({"content": b"{"}, "bad_json"),
], ids=["unknown field", "not an object", "malformed"])
async def test_a_bad_retry_body_is_refused(gw: RunningGateway, kwargs: dict[str, Any],
                                           code: str) -> None:
    run_id = await gw.start_run("fragile")
    await fail(gw, run_id)
    assert_error(await gw.http.post(f"/runs/{run_id}/retry", **kwargs), 400, code)
    assert await run_status(gw, run_id) == "failed"


async def test_a_running_run_cannot_be_retried(gw: RunningGateway) -> None:
    run_id = await gw.start_run("chain")
    assert_error(await gw.http.post(f"/runs/{run_id}/retry"), 409, "conflict")
    assert await run_status(gw, run_id) == "started"


# -- access: the rules of GET /runs/{run_id} -----------------------------------------------------


async def test_only_the_owner_or_an_admin_steers_a_run(gw: RunningGateway) -> None:
    cancel_me = await gw.start_run("chain", headers=bearer("alice"))
    answer_me = await waiting_approval(gw, headers=bearer("alice"))
    retry_me = await gw.start_run("fragile", headers=bearer("alice"))
    await fail(gw, retry_me)
    requests: list[tuple[str, str, dict[str, Any]]] = [
        (cancel_me, f"/runs/{cancel_me}/cancel", {}),
        (answer_me, f"/runs/{answer_me}/steps/approve/input", {"json": {"value": {"ok": True}}}),
        (retry_me, f"/runs/{retry_me}/retry", {}),
    ]
    for run_id, path, kwargs in requests:
        assert_error(await gw.http.post(path, headers=bearer("bob"), **kwargs),
                     403, "forbidden")
        assert_error(await gw.http.post(path, **kwargs), 401, "unauthorized")
        # a token without a role, or with another, is not an admin
        assert_error(await gw.http.post(path, headers=bearer("bob", role="ops"), **kwargs),
                     403, "forbidden")
        # GET agrees
        assert (await gw.http.get(f"/runs/{run_id}", headers=bearer("bob"))).status_code == 403
    # nothing happened
    assert await run_status(gw, cancel_me) == "started"
    assert await step_status(gw, answer_me, "approve") == "waiting"
    assert await run_status(gw, retry_me) == "failed"
    # the owner may
    assert (await gw.http.post(f"/runs/{cancel_me}/cancel",
                               headers=bearer("alice"))).status_code == 200
    assert (await gw.http.post(f"/runs/{answer_me}/steps/approve/input",
                               json={"value": {"ok": True}},
                               headers=bearer("alice"))).status_code == 200
    # and an admin
    assert (await gw.http.post(f"/runs/{retry_me}/retry", headers=ADMIN)).status_code == 200


async def test_a_run_without_owner_is_steered_by_anyone_who_may_read_its_flow(
    gw: RunningGateway,
) -> None:
    run_id = await gw.start_run("chain")
    assert (await gw.http.post(f"/runs/{run_id}/cancel",
                               headers=bearer("bob"))).status_code == 200
    hidden = await gw.start_run("hidden", headers=bearer("alice"))
    assert_error(await gw.http.post(f"/runs/{hidden}/cancel"), 401, "unauthorized")
    assert (await gw.http.post(f"/runs/{hidden}/cancel",
                               headers=bearer("alice"))).status_code == 200


async def test_a_bad_token_is_refused_before_anything(gw: RunningGateway) -> None:
    run_id = await gw.start_run("chain")
    response = await gw.http.post(f"/runs/{run_id}/cancel",
                                  headers={"Authorization": "Bearer not-a-token"})
    assert_error(response, 401, "unauthorized")
    assert await run_status(gw, run_id) == "started"


# -- idempotent starts --------------------------------------------------------------------------


async def test_the_same_key_starts_one_run_however_many_ask_at_once(gw: RunningGateway) -> None:
    key = f"order-{uuid.uuid4()}"
    before = await count_runs(gw, "chain")
    responses = await asyncio.gather(*(
        gw.http.post("/rpc/run_flow", json={"flow_slug": "chain", "input": {"n": 1}},
                     headers={"Idempotency-Key": key})
        for _ in range(20)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 19 + [201], [r.text for r in responses]
    bodies = {r.text for r in responses}
    assert len(bodies) == 1  # the same body, byte for byte
    body = responses[0].json()
    assert body == {"run_id": body["run_id"], "flow_slug": "chain", "version": 1,
                    "status": "started"}
    assert {r.headers["location"] for r in responses} == {f"/runs/{body['run_id']}"}
    snapshot = (await gw.http.get(f"/runs/{body['run_id']}")).json()
    assert snapshot["idempotency_key"] == key
    assert await count_runs(gw, "chain") == before + 1
    # and later, the same
    again = await gw.http.post("/rpc/run_flow", json={"flow_slug": "chain", "input": {"n": 1}},
                               headers={"Idempotency-Key": key})
    assert (again.status_code, again.text) == (200, responses[0].text)


async def test_many_keys_at_once_each_start_one_run(gw: RunningGateway) -> None:
    keys = [f"k{i}-{uuid.uuid4()}" for i in range(5)]
    before = await count_runs(gw, "chain")
    responses = await asyncio.gather(*(
        gw.http.post("/rpc/run_flow", json={"flow_slug": "chain", "input": key},
                     headers={"Idempotency-Key": key})
        for key in keys * 4))
    assert sorted(r.status_code for r in responses) == [200] * 15 + [201] * 5
    by_key: dict[str, set[str]] = {}
    for key, response in zip(keys * 4, responses, strict=True):
        by_key.setdefault(key, set()).add(response.json()["run_id"])
    assert all(len(ids) == 1 for ids in by_key.values())
    assert len({next(iter(ids)) for ids in by_key.values()}) == 5
    assert await count_runs(gw, "chain") == before + 5


async def test_the_same_key_with_another_input_is_a_conflict(gw: RunningGateway) -> None:
    key = str(uuid.uuid4())
    first = await gw.http.post("/rpc/run_flow", json={"flow_slug": "chain", "input": {"n": 1}},
                               headers={"Idempotency-Key": key})
    assert first.status_code == 201
    for other_input in ({"n": 2}, None, [1], {"n": 1, "m": 0}):
        response = await gw.http.post("/rpc/run_flow",
                                      json={"flow_slug": "chain", "input": other_input},
                                      headers={"Idempotency-Key": key})
        assert_error(response, 422, "idempotency_conflict")
    # key order in an object is no difference
    same = await gw.http.post(
        "/rpc/run_flow", content=b'{"input": {"n": 1}, "flow_slug": "chain"}',
        headers={"Idempotency-Key": key})
    assert same.status_code == 200
    assert same.json()["run_id"] == first.json()["run_id"]


async def test_a_key_belongs_to_its_flow_and_owner(gw: RunningGateway) -> None:
    key = str(uuid.uuid4())
    starts = [
        ("chain", None), ("chain", bearer("alice")), ("chain", bearer("bob")),
        ("approval", None),
    ]
    run_ids = []
    for flow, headers in starts:
        response = await gw.http.post("/rpc/run_flow", json={"flow_slug": flow},
                                      headers={"Idempotency-Key": key, **(headers or {})})
        assert response.status_code == 201, (flow, headers, response.text)
        run_ids.append(response.json()["run_id"])
    assert len(set(run_ids)) == len(starts)
    repeat = await gw.http.post("/rpc/run_flow", json={"flow_slug": "chain"},
                                headers={"Idempotency-Key": key, **bearer("alice")})
    assert (repeat.status_code, repeat.json()["run_id"]) == (200, run_ids[1])


async def test_without_a_key_every_request_starts_a_run(gw: RunningGateway) -> None:
    before = await count_runs(gw, "chain")
    responses = await asyncio.gather(*(
        gw.http.post("/rpc/run_flow", json={"flow_slug": "chain", "input": {"n": 1}})
        for _ in range(5)))
    assert [r.status_code for r in responses] == [201] * 5
    assert await count_runs(gw, "chain") == before + 5
    assert len({r.json()["run_id"] for r in responses}) == 5


async def test_a_key_of_255_visible_characters_is_fine(gw: RunningGateway) -> None:
    key = "".join(chr(c) for c in range(0x21, 0x7F)) * 3  # 282 characters
    response = await gw.http.post("/rpc/run_flow", json={"flow_slug": "chain"},
                                  headers={"Idempotency-Key": key[:255]})
    assert response.status_code == 201, response.text
    snapshot = (await gw.http.get(f"/runs/{response.json()['run_id']}")).json()
    assert snapshot["idempotency_key"] == key[:255]


BAD_KEYS: list[tuple[str, list[tuple[bytes, bytes]]]] = [
    ("empty", [(b"Idempotency-Key", b"")]),
    ("too long", [(b"Idempotency-Key", b"k" * 256)]),
    ("a space inside", [(b"Idempotency-Key", b"two words")]),
    ("a tab inside", [(b"Idempotency-Key", b"a\tb")]),
    ("latin-1", [(b"Idempotency-Key", "café".encode("latin-1"))]),
    ("utf-8", [(b"Idempotency-Key", "café".encode())]),
    ("twice", [(b"Idempotency-Key", b"one"), (b"Idempotency-Key", b"two")]),
    ("twice the same", [(b"Idempotency-Key", b"one"), (b"idempotency-key", b"one")]),
]


@pytest.mark.parametrize("headers", [c[1] for c in BAD_KEYS], ids=[c[0] for c in BAD_KEYS])
async def test_a_bad_key_is_refused_and_starts_nothing(
    gw: RunningGateway, headers: list[tuple[bytes, bytes]]
) -> None:
    before = await count_runs(gw, "fragile")
    response = await gw.http.post("/rpc/run_flow", json={"flow_slug": "fragile"},
                                  headers=[(b"Content-Type", b"application/json"), *headers])
    error = assert_error(response, 400, "bad_request")
    assert "Idempotency-Key" in error["message"]
    assert await count_runs(gw, "fragile") == before


async def test_a_keyed_start_still_checks_the_flow_and_its_access(gw: RunningGateway) -> None:
    key = str(uuid.uuid4())
    assert_error(await gw.http.post("/rpc/run_flow", json={"flow_slug": "nope"},
                                    headers={"Idempotency-Key": key}), 404, "not_found")
    assert_error(await gw.http.post("/rpc/run_flow", json={"flow_slug": "hidden"},
                                    headers={"Idempotency-Key": key}), 401, "unauthorized")
    # the refusals used nothing up: the key still starts a run
    started = await gw.http.post("/rpc/run_flow", json={"flow_slug": "hidden"},
                                 headers={"Idempotency-Key": key, **bearer("alice")})
    assert started.status_code == 201


# -- listing, the document -------------------------------------------------------------------


async def test_runs_can_be_listed_by_the_cancelled_status(gw: RunningGateway) -> None:
    run_id = await gw.start_run("chain")
    assert (await gw.http.post(f"/runs/{run_id}/cancel")).status_code == 200
    listed = (await gw.http.get("/runs", params={"status": "cancelled", "limit": 1000},
                                headers=ADMIN)).json()["runs"]
    assert run_id in [r["run_id"] for r in listed]
    assert {r["status"] for r in listed} == {"cancelled"}
    both = await gw.http.get("/runs", params={"status": "cancelled,failed"}, headers=ADMIN)
    assert both.status_code == 200
    assert_error(await gw.http.get("/runs", params={"status": "waiting"}, headers=ADMIN),
                 400, "bad_request")


async def test_the_openapi_document_names_the_new_routes(gw: RunningGateway) -> None:
    document = (await gw.http.get("/openapi.json")).json()
    paths = document["paths"]
    for path in ("/runs/{run_id}/cancel", "/runs/{run_id}/steps/{step_slug}/input",
                 "/runs/{run_id}/retry"):
        assert set(paths[path]) == {"post"}, path
        assert "409" in paths[path]["post"]["responses"]
    run_flow = paths["/rpc/run_flow"]["post"]
    assert [p["name"] for p in run_flow["parameters"]] == ["Idempotency-Key"]
    assert {"200", "201", "422"} <= set(run_flow["responses"])
    codes = document["components"]["schemas"]["Error"]["properties"]["error"]["properties"][
        "code"]["enum"]
    assert {"conflict", "invalid_input", "idempotency_conflict"} <= set(codes)


# -- flow versions ------------------------------------------------------------------------------

VERSIONED_V1 = {"slug": "versioned", "steps": [
    {"slug": "ask", "kind": "input", "schema": {"type": "boolean"}}]}
VERSIONED_V2 = {"slug": "versioned", "steps": [
    {"slug": "ask", "kind": "input", "schema": {"type": "string"}},
    {"slug": "after", "depends_on": ["ask"]}]}


async def test_a_new_version_serves_new_runs_while_an_old_run_keeps_its_own_shape(
    gw: RunningGateway,
) -> None:
    store = store_of(gw)
    await store.define_flow(VERSIONED_V1)
    started = await gw.http.post("/rpc/run_flow", json={"flow_slug": "versioned"})
    assert started.status_code == 201, started.text
    assert started.json()["version"] == 1
    old_run = started.json()["run_id"]
    await store.define_flow(VERSIONED_V2)
    started = await gw.http.post("/rpc/run_flow", json={"flow_slug": "versioned"})
    assert started.json()["version"] == 2
    new_run = started.json()["run_id"]

    newest = await gw.http.get("/flows/versioned")
    assert (newest.json()["version"], len(newest.json()["steps"])) == (2, 2)
    assert newest.headers["cache-control"] == "public, max-age=5"
    old_shape = await gw.http.get("/flows/versioned", params={"version": 1})
    assert (old_shape.json()["version"], len(old_shape.json()["steps"])) == (1, 1)
    assert old_shape.headers["cache-control"] == "public, max-age=86400"
    assert_error(await gw.http.get("/flows/versioned", params={"version": 9}), 404, "not_found")
    assert_error(await gw.http.get("/flows/versioned", params={"version": "x"}), 400,
                 "bad_request")
    assert [(await gw.http.get(f"/runs/{r}")).json()["version"] for r in (old_run, new_run)] == [
        1, 2]

    # each run's value is checked against its own version's schema
    assert_error(await gw.http.post(f"/runs/{old_run}/steps/ask/input", json={"value": "yes"}),
                 400, "invalid_input")
    assert_error(await gw.http.post(f"/runs/{new_run}/steps/ask/input", json={"value": True}),
                 400, "invalid_input")
    ok = await gw.http.post(f"/runs/{old_run}/steps/ask/input", json={"value": True})
    assert ok.status_code == 200, ok.text
    assert await run_status(gw, old_run) == "completed"  # version 1 has no `after`
    ok = await gw.http.post(f"/runs/{new_run}/steps/ask/input", json={"value": "yes"})
    assert ok.status_code == 200, ok.text
    assert await step_status(gw, new_run, "after") == "started"
