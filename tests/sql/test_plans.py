"""Plan stability: the hot path's statements keep their plan once the tables have statistics.

A realistic state (finished runs, thousands of queued steps) is ANALYZEd while nothing is leased,
as autovacuum would; then every hot-path function is called while auto_explain (nested statements,
actual row counts) sends each statement's plan back to this connection as a notice. Every
statement inside the engine's functions must

- never read pgflow.runs, step_states or run_events by a sequential scan, and
- examine rows in proportion to its batch, never to the tables: at most ROWS_PER_TASK per task of
  the batch. The tables hold several times more rows than that bound, so a scan of one, a sort
  of one, or a join driven from the wrong side (the leased-step index on the outside of a loop
  over the reported batch: 700,000 rows for 500 reports) fails the test.

Each function runs under custom plans and under generic plans (PL/pgSQL switches to a generic
plan after five calls), so a plan that is only good for the values at hand fails too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import asyncpg
import orjson
import pytest

from tests.sql._helpers import DIAMOND, define

BATCH = 100  # tasks per claim and report, as a worker's batch
HISTORY_RUNS = 1500  # finished runs already in the tables
BACKLOG_RUNS = 3000  # queued runs: 3,000 ready steps, 9,000 waiting for theirs
ROWS_PER_TASK = 20  # rows a statement may examine per task of its batch
ROW_BOUND = ROWS_PER_TASK * BATCH  # 2,000: runs holds 4,500 rows, step_states 18,000
BIG_TABLES = {"runs", "step_states", "run_events"}
PLAN_MODES = ("force_custom_plan", "force_generic_plan")


async def _drain(conn: asyncpg.Connection, worker: str = "builder") -> None:
    """Completes every ready step, 1,000 at a time (the history's runs)."""
    while tasks := await conn.fetch("select * from pgflow.claim_tasks($1, 1000)", worker):
        await _report(conn, worker, tasks)


async def _report(
    conn: asyncpg.Connection, worker: str, tasks: list[Any], errors: list[str | None] | None = None
) -> list[bool]:
    applied: list[bool] = await conn.fetchval(
        "select pgflow.report_steps($1, $2, $3, $4, $5::jsonb[], $6)",
        worker,
        [t["run_id"] for t in tasks],
        [t["step_slug"] for t in tasks],
        [t["attempt"] for t in tasks],
        [orjson.dumps({"by": t["step_slug"]}).decode() for t in tasks],
        errors or [None] * len(tasks),
    )
    return applied


async def _build_state(
    conn: asyncpg.Connection,
    history: int = HISTORY_RUNS,
    backlog: int = BACKLOG_RUNS,
    analyze: bool = True,
) -> None:
    # a retry is claimable at once and the second failure fails the run: every path is reachable
    await define(conn, {**DIAMOND, "max_attempts": 2, "base_delay": 0})
    await conn.execute(
        "select pgflow.run_flow('diamond', to_jsonb(i)) from generate_series(1, $1) as i",
        history,
    )
    await _drain(conn)
    await conn.execute(
        "select pgflow.run_flow('diamond', to_jsonb(i)) from generate_series(1, $1) as i",
        backlog,
    )
    if not analyze:
        return
    # statistics taken while nothing is leased, as autovacuum takes them after a burst of runs
    for table in ("flows", "steps", "runs", "step_states", "run_events"):
        await conn.execute(f"analyze pgflow.{table}")


class Plans:
    """Collects the plans auto_explain sends to this connection as notices."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.plans: list[dict[str, Any]] = []
        conn.add_log_listener(self._on_message)

    def _on_message(self, _conn: object, message: Any) -> None:
        text = str(message.message)
        if "plan:" in text:
            self.plans.append(orjson.loads(text.split("plan:", 1)[1]))

    async def start(self) -> None:
        try:
            await self.conn.execute("load 'auto_explain'")
        except asyncpg.PostgresError as error:  # pragma: no cover - a broken server install
            pytest.fail(f"auto_explain is needed to read plans and could not be loaded: {error}")
        await self.conn.execute(
            "set auto_explain.log_nested_statements = on;"
            " set auto_explain.log_analyze = on;"
            " set auto_explain.log_timing = off;"
            " set auto_explain.log_format = json;"
            " set auto_explain.log_level = notice;"
            " set client_min_messages = notice"
        )

    async def recording(self, on: bool) -> None:
        await self.conn.execute(f"set auto_explain.log_min_duration = {0 if on else -1}")


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


def _examined(node: dict[str, Any]) -> float:
    """Rows a node read or threw away, over all its loops (EXPLAIN shows per-loop averages)."""
    loops = node.get("Actual Loops", 0)
    thrown = (
        node.get("Rows Removed by Filter", 0)
        + node.get("Rows Removed by Join Filter", 0)
        + node.get("Rows Removed by Index Recheck", 0)
    )
    read = node.get("Actual Rows", 0) if "Relation Name" in node else 0
    return float((read + thrown) * loops)


def _describe(node: dict[str, Any], depth: int = 0) -> str:
    """The plan as an indented outline: what ran, on what, how many rows, how many loops."""
    what = " ".join(
        str(node[k]) for k in ("Node Type", "Relation Name", "Index Name") if k in node
    )
    line = f"{'  ' * depth}{what} rows={node.get('Actual Rows')} loops={node.get('Actual Loops')}"
    return "\n".join([line, *(_describe(c, depth + 1) for c in node.get("Plans", []))])


def plan_problems(plan: dict[str, Any], row_bound: int = ROW_BOUND) -> list[str]:
    """What is wrong with one statement's plan (empty: nothing)."""
    query = re.sub(r"\s+", " ", plan.get("Query Text", ""))[:160]
    problems = []
    examined = 0.0
    for node in _nodes(plan["Plan"]):
        examined += _examined(node)
        if node["Node Type"] == "Seq Scan" and node.get("Relation Name") in BIG_TABLES:
            problems.append(f"Seq Scan on {node['Relation Name']} in: {query}")
    if examined > row_bound:
        problems.append(f"{examined:.0f} rows examined (bound {row_bound}) in: {query}")
    return problems


async def _exercise(conn: asyncpg.Connection, plans: Plans, batch: int = BATCH) -> None:
    """Every hot-path function, in the shapes the worker (and the gateway) call them."""

    async def record(query: str, *args: Any) -> Any:
        await plans.recording(True)
        try:
            return await conn.fetch(query, *args)
        finally:
            await plans.recording(False)

    for _ in range(7):  # more than five calls: PL/pgSQL's own choice of a generic plan too
        await record("select pgflow.run_flow('diamond', '{}'::jsonb)")
        await record(
            "select pgflow.run_flows($1, $2::jsonb[], $3)",
            ["diamond", "nope", "diamond"], ["1", "2", "3"], ["a", "b", None],
        )
        tasks = await record("select * from pgflow.claim_tasks('w1', $1, '{diamond}', 30)", batch)
        assert len(tasks) == batch
        await record(
            "select pgflow.extend_leases('w1', $1, $2, 30)",
            [t["run_id"] for t in tasks], [t["step_slug"] for t in tasks],
        )
        keep, single, given_back = tasks[:-4], tasks[-4:-2], tasks[-2:]
        await plans.recording(True)
        try:
            # one failure among the completions: the per-step path of report_steps
            errors = [None] * (len(keep) - 1) + ["boom"]
            assert all(await _report(conn, "w1", keep, errors))
        finally:
            await plans.recording(False)
        await record(
            "select pgflow.complete_step($1, $2, '1'::jsonb, 'w1', $3)",
            single[0]["run_id"], single[0]["step_slug"], single[0]["attempt"],
        )
        await record(
            "select pgflow.fail_step($1, $2, 'boom', 'w1', $3)",
            single[1]["run_id"], single[1]["step_slug"], single[1]["attempt"],
        )
        await record(
            "select pgflow.release_tasks('w1', $1, $2)",
            [t["run_id"] for t in given_back], [t["step_slug"] for t in given_back],
        )
        # leases whose holder vanished: the next claim sweeps them (retry, or fail the run)
        lost = await conn.fetch("select * from pgflow.claim_tasks('w2', 3, null, 30)")
        await conn.execute(
            "update pgflow.step_states set lease_expires_at = clock_timestamp() - interval '1s'"
            " where leased_by = 'w2'"
        )
        assert lost
        swept = await record("select * from pgflow.claim_tasks('w3', $1, null, 30)", batch)
        await record("select pgflow.release_tasks('w3')")
        assert swept
    # a worker's shutdown: everything it still holds
    await conn.fetch("select * from pgflow.claim_tasks('w4', 5, null, 30)")
    await record("select pgflow.release_tasks('w4')")


@pytest.mark.parametrize("plan_mode", PLAN_MODES)
async def test_hot_path_plans_survive_statistics(conn: asyncpg.Connection, plan_mode: str) -> None:
    await _build_state(conn)
    plans = Plans(conn)
    await plans.start()
    await conn.execute(f"set plan_cache_mode = {plan_mode}")
    await _exercise(conn, plans)
    nested = [p for p in plans.plans if "pgflow." in p.get("Query Text", "")]
    assert len(nested) > 100, "auto_explain sent too few plans: the test would check nothing"
    problems = {
        problem: _describe(plan["Plan"]) for plan in nested for problem in plan_problems(plan)
    }
    assert not problems, "\n".join(f"{p}\n{outline}" for p, outline in problems.items())


async def test_plans_made_on_young_tables_stay_good_as_they_grow(
    conn: asyncpg.Connection,
) -> None:
    """A new install's first minutes: tables of a few hundred rows that autovacuum has not
    analyzed yet. The planner then finds a sequential scan of runs inside a loop cheaper than
    its index (found by bench/interactive.py: 3.6 ms for a 14-run update), and the hot
    functions keep one generic plan per statement for the session, made on those small tables.
    With sequential scans off in the hot functions, the plans made then are loops over keys,
    and stay within the bounds after the tables grow tenfold on the same connection; without
    that, five statements here scan runs or step_states."""
    batch = 10
    await _build_state(conn, history=30, backlog=300, analyze=False)
    plans = Plans(conn)
    await plans.start()
    await _exercise(conn, plans, batch=batch)
    await conn.execute(
        "select pgflow.run_flow('diamond', to_jsonb(i)) from generate_series(1, 3000) as i"
    )
    await _exercise(conn, plans, batch=batch)
    nested = [p for p in plans.plans if "pgflow." in p.get("Query Text", "")]
    assert len(nested) > 200, "auto_explain sent too few plans: the test would check nothing"
    problems = {
        problem: _describe(plan["Plan"])
        for plan in nested for problem in plan_problems(plan, ROWS_PER_TASK * batch)
    }
    assert not problems, "\n".join(f"{p}\n{outline}" for p, outline in problems.items())


def test_plan_problems_catches_a_loop_driven_from_the_wrong_side() -> None:
    """The check itself: the plan report_steps had after ANALYZE fails it."""
    bad = {
        "Query Text": "with reported as (...)",
        "Plan": {
            "Node Type": "Nested Loop",
            "Actual Rows": 500,
            "Actual Loops": 1,
            "Rows Removed by Join Filter": 699500,
            "Plans": [
                {"Node Type": "Index Scan", "Relation Name": "step_states",
                 "Index Name": "step_states_leased_idx", "Actual Rows": 1400, "Actual Loops": 1},
                {"Node Type": "Function Scan", "Actual Rows": 500, "Actual Loops": 1400},
            ],
        },
    }
    assert [p.split(" in: ")[0] for p in plan_problems(bad)] == [
        "700900 rows examined (bound 2000)"
    ]
    seq = {"Query Text": "x", "Plan": {"Node Type": "Seq Scan", "Relation Name": "runs",
                                       "Actual Rows": 1, "Actual Loops": 1}}
    assert plan_problems(seq) == ["Seq Scan on runs in: x"]


async def test_a_running_runs_row_is_updated_without_new_index_entries(
    conn: asyncpg.Connection,
) -> None:
    # runs keeps half of each page free (0040_table_runs.sql): each report that completes a
    # run's step updates its row, and with room on the page that is a heap-only update (no entry
    # in any index). Full pages, as the runs were inserted, would make almost every one write
    # an entry in each of the table's indexes.
    await define(conn, DIAMOND)
    await conn.execute("select pgflow.run_flow('diamond', '{}') from generate_series(1, 200)")
    tasks = await conn.fetch("select * from pgflow.claim_tasks('w', 1000)")
    assert len(tasks) == 200
    async with conn.transaction():
        await _report(conn, "w", tasks)
        updates, heap_only = await conn.fetchrow(
            "select n_tup_upd, n_tup_hot_upd from pg_stat_xact_user_tables"
            " where relid = 'pgflow.runs'::regclass"
        )
    assert updates == 200
    assert heap_only >= 190, f"{heap_only} of {updates} updates were heap-only"
