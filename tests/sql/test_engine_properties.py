"""Property test: random DAGs driven by concurrent workers that complete and fail at random."""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgflow.db.connection import connect

_slugs = itertools.count()


@st.composite
def dags(draw: st.DrawFn) -> list[tuple[str, list[str]]]:
    size = draw(st.integers(min_value=1, max_value=9))
    steps: list[tuple[str, list[str]]] = []
    for i in range(size):
        deps = draw(st.sets(st.integers(min_value=0, max_value=i - 1), max_size=4)) if i else set()
        steps.append((f"s{i}", [f"s{d}" for d in sorted(deps)]))
    return steps


async def scenario(
    db_url: str, dag: list[tuple[str, list[str]]], seed: int, fail_rate: float
) -> None:
    slug = f"prop_{next(_slugs)}"
    rng = random.Random(seed)
    conns = [await connect(db_url) for _ in range(3)]
    try:
        await conns[0].fetchval(
            "select pgflow.define_flow($1::jsonb)",
            {
                "slug": slug,
                "max_attempts": 3,
                "base_delay": 0,
                "steps": [{"slug": s, "depends_on": d} for s, d in dag],
            },
        )
        run_ids = [
            await conns[0].fetchval("select pgflow.run_flow($1, '{}')", slug) for _ in range(3)
        ]
        claimed: list[tuple[Any, str, int]] = []

        async def work(conn: Any, name: str) -> None:
            idle = 0
            while idle < 3:
                tasks = await conn.fetch(
                    "select * from pgflow.claim_tasks($1, $2, array[$3])",
                    name,
                    rng.randint(1, 4),
                    slug,
                )
                if not tasks:
                    idle += 1
                    await asyncio.sleep(0.005)
                    continue
                idle = 0
                rng.shuffle(tasks)
                for t in tasks:
                    claimed.append((t["run_id"], t["step_slug"], t["attempt"]))
                    # every dependency's output is in the input: it completed before
                    assert set(t["input"]) == {"run", *dict(dag)[t["step_slug"]]}
                failing = [rng.random() < fail_rate for _ in tasks]
                if rng.random() < 0.5:
                    # the worker's path: one report_steps call for the whole batch
                    applied = await conn.fetchval(
                        "select pgflow.report_steps($1, $2, $3, $4, $5::jsonb[], $6)",
                        name,
                        [t["run_id"] for t in tasks],
                        [t["step_slug"] for t in tasks],
                        [t["attempt"] for t in tasks],
                        [
                            None if f else {"s": t["step_slug"], "r": str(t["run_id"])}
                            for t, f in zip(tasks, failing, strict=True)
                        ],
                        ["random" if f else None for f in failing],
                    )
                    assert len(applied) == len(tasks)
                    continue
                # psql's path: a call per step, several runs in one transaction, in run_id order
                tasks.sort(key=lambda t: t["run_id"])
                async with conn.transaction():
                    for t, f in zip(tasks, failing, strict=True):
                        if f:
                            await conn.fetchval(
                                "select pgflow.fail_step($1, $2, 'random', $3, $4)",
                                t["run_id"],
                                t["step_slug"],
                                name,
                                t["attempt"],
                            )
                        else:
                            await conn.fetchval(
                                "select pgflow.complete_step($1, $2, $3::jsonb, $4, $5)",
                                t["run_id"],
                                t["step_slug"],
                                {"s": t["step_slug"], "r": str(t["run_id"])},
                                name,
                                t["attempt"],
                            )

        await asyncio.gather(*(work(c, f"w{i}") for i, c in enumerate(conns)))

        for run_id in run_ids:
            run = await conns[0].fetchval("select pgflow.get_run($1)", run_id)
            log = [
                r[0]
                for r in await conns[0].fetch(
                    "select e from pgflow.get_run_events($1, 0) as e", run_id
                )
            ]
            assert run["status"] in ("completed", "failed"), run
            assert [e["seq"] for e in log] == list(range(1, len(log) + 1))
            assert run["seq"] == len(log)
            terminal = [e for e in log if e["event"] in ("run:completed", "run:failed")]
            assert len(terminal) == 1
            assert log[-1] is terminal[0]
            started: dict[tuple[str, int], int] = {}  # (step, attempt) -> seq
            completed: dict[str, int] = {}
            for e in log:
                if e["event"] == "step:started":
                    key = (e["step_slug"], e["attempt"])
                    assert key not in started, f"step:started of {key} twice"
                    started[key] = e["seq"]
                elif e["event"] == "step:completed":
                    assert e["step_slug"] not in completed, f"{e['step_slug']} completed twice"
                    completed[e["step_slug"]] = e["seq"]
            for step, deps in dag:
                if (step, 1) in started:
                    for dep in deps:
                        assert completed[dep] < started[(step, 1)]
            # every retry a worker claimed has its own step:started, after the attempt before it
            # failed and before its own outcome
            for claimed_run, step, attempt in claimed:
                if claimed_run != run_id or attempt < 2:
                    continue
                assert (step, attempt) in started, f"no step:started for {step} attempt {attempt}"
                retried = [e["seq"] for e in log if e["event"] == "step:retrying"
                           and (e["step_slug"], e["attempt"]) == (step, attempt - 1)]
                assert retried, f"{step} attempt {attempt} started without a retry before"
                assert retried[0] < started[(step, attempt)]
                assert all(started[(step, attempt)] < e["seq"] for e in log
                           if (e["step_slug"], e["attempt"]) == (step, attempt)
                           and e["event"] != "step:started")
            # each claimed attempt ended in at most one outcome (a run failure cancels the rest)
            attempts = sorted(a for r, _, a in claimed if r == run_id)
            outcomes = [
                e for e in log if e["event"] in ("step:completed", "step:retrying", "step:failed")
            ]
            assert len(outcomes) <= len(attempts)
            final = {s["step_slug"]: s for s in run["steps"]}
            for step, _ in dag:
                mine = [e for e in log if e["step_slug"] == step and e["event"].startswith("step:")]
                if run["status"] == "completed":
                    assert final[step]["status"] == "completed"
                    assert mine[-1]["event"] == "step:completed"
                    assert final[step]["attempt"] == mine[-1]["attempt"]
                elif mine and mine[-1]["event"] in ("step:completed", "step:failed"):
                    assert final[step]["status"] == mine[-1]["status"]
            if run["status"] == "completed":
                assert not any(e["event"] == "step:failed" for e in log)
                # the run's output: its one leaf's, or each leaf's by slug (each output names
                # its run, so outputs given to the wrong run of a batch would show)
                leaves = [s for s, _ in dag if not any(s in deps for _, deps in dag)]
                outputs = {s: {"s": s, "r": str(run_id)} for s in leaves}
                expected = outputs[leaves[0]] if len(leaves) == 1 else outputs
                assert run["output"] == expected
                assert terminal[0]["output"] == expected
    finally:
        for c in conns:
            await c.close()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    dag=dags(),
    seed=st.integers(min_value=0, max_value=2**32),
    fail_rate=st.sampled_from([0.0, 0.2, 0.5]),
)
def test_random_dags_under_concurrent_workers_keep_every_invariant(
    db_url: str, dag: list[tuple[str, list[str]]], seed: int, fail_rate: float
) -> None:
    asyncio.run(scenario(db_url, dag, seed, fail_rate))
