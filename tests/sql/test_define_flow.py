from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import orjson
import pytest

from tests.sql._helpers import DIAMOND, claim, complete, define, run_state, start


async def definition_error(conn: Any, definition: Any) -> asyncpg.PostgresError:
    with pytest.raises(asyncpg.PostgresError) as info:
        await conn.fetchval("select pgflow.define_flow($1::jsonb)", definition)
    return info.value


async def test_define_flow_returns_the_normalised_shape_with_defaults(conn: Any) -> None:
    shape = await define(conn, DIAMOND)
    assert shape["slug"] == "diamond"
    assert [s["slug"] for s in shape["steps"]] == ["a", "b", "c", "d"]
    assert shape["steps"][3] == {
        "slug": "d",
        "depends_on": ["b", "c"],
        "max_attempts": 3,
        "base_delay": 1,
        "timeout": 60,
    }


async def test_define_flow_makes_the_single_leaf_the_output_step(conn: Any) -> None:
    assert (await define(conn, DIAMOND))["output_step"] == "d"


async def test_define_flow_leaves_no_output_step_when_there_are_several_leaves(conn: Any) -> None:
    shape = await define(conn, {"slug": "two", "steps": [{"slug": "a"}, {"slug": "b"}]})
    assert shape["output_step"] is None


async def test_define_flow_applies_flow_wide_defaults_to_steps(conn: Any) -> None:
    shape = await define(
        conn,
        {
            "slug": "f",
            "max_attempts": 5,
            "base_delay": 0.5,
            "timeout": 9,
            "steps": [{"slug": "a"}, {"slug": "b", "max_attempts": 1}],
        },
    )
    assert [(s["max_attempts"], s["base_delay"], s["timeout"]) for s in shape["steps"]] == [
        (5, 0.5, 9),
        (1, 0.5, 9),
    ]


async def test_define_flow_is_idempotent_for_the_same_shape(conn: Any) -> None:
    first = await define(conn, DIAMOND)
    reordered = {**DIAMOND, "steps": list(reversed(DIAMOND["steps"]))}
    assert await define(conn, reordered) == first
    assert await conn.fetchval("select count(*) from pgflow.flows") == 1


async def test_define_flow_accepts_its_own_output_as_input(conn: Any) -> None:
    shape = await define(conn, DIAMOND)
    assert await define(conn, shape) == shape


async def test_a_changed_shape_under_a_slug_is_its_next_version_and_an_old_one_is_found(
        conn: Any) -> None:
    first = await define(conn, DIAMOND)
    assert first["version"] == 1
    changed = {**DIAMOND, "steps": [*DIAMOND["steps"][:3], {"slug": "d", "depends_on": ["b"]}]}
    second = await define(conn, changed)
    assert second["version"] == 2
    assert second["steps"][3]["depends_on"] == ["b"]
    third = await define(conn, {**DIAMOND, "max_attempts": 7})
    assert third["version"] == 3
    # the code of an older version, defined again (another document, same shape): that version
    assert await define(conn, {**DIAMOND, "steps": DIAMOND["steps"][::-1]}) == first
    assert await define(conn, changed) == second
    rows = await conn.fetch("select flow_slug, name, version from pgflow.flows order by version")
    assert [tuple(r) for r in rows] == [("diamond", "diamond", 1), ("diamond@2", "diamond", 2),
                                       ("diamond@3", "diamond", 3)]
    assert await conn.fetchval("select pgflow.get_flow('diamond')") == third
    assert await conn.fetchval("select pgflow.get_flow('diamond', 2)") == second
    assert await conn.fetchval("select pgflow.get_flow('diamond', 4)") is None


async def test_runs_in_flight_finish_on_their_version_and_new_runs_start_on_the_newest(
        conn: Any) -> None:
    await define(conn, DIAMOND)
    old = await start(conn, "diamond", "old")
    (a_old,) = await claim(conn)
    # version 2 arrives while the old run is going: a single step
    await define(conn, {"slug": "diamond", "steps": [{"slug": "only"}]})
    new = await start(conn, "diamond", "new")
    assert [(r["flow_slug"], r["version"]) for r in [await run_state(conn, old),
                                                      await run_state(conn, new)]] == [
        ("diamond", 1), ("diamond", 2)]
    assert await complete(conn, a_old)
    tasks = await claim(conn)
    assert sorted((t["flow_slug"], t["step_slug"]) for t in tasks) == [
        ("diamond", "b"), ("diamond", "c"), ("diamond@2", "only")]
    for task in tasks:
        assert await complete(conn, task)
    (d,) = await claim(conn)
    assert await complete(conn, d, {"d": True})
    assert [(await run_state(conn, r))["status"] for r in (old, new)] == ["completed",
                                                                        "completed"]
    assert (await run_state(conn, old))["output"] == {"d": True}  # its version's output step
    # a worker that serves only version 1 claims nothing of version 2
    later = await start(conn, "diamond", "later")
    assert await conn.fetch("select * from pgflow.claim_tasks('w', 10, array['diamond'])") == []
    assert (await claim(conn))[0]["run_id"] == later


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        ([1, 2], "must be a JSON object"),
        ({"steps": [{"slug": "a"}]}, '"slug" must be a string'),
        ({"slug": "has space", "steps": [{"slug": "a"}]}, "the slug must match"),
        (
            {"slug": "x'; drop table pgflow.runs; --", "steps": [{"slug": "a"}]},
            "the slug must match",
        ),
        ({"slug": "f", "steps": []}, '"steps" must be a non-empty array'),
        ({"slug": "f", "steps": {"a": 1}}, '"steps" must be a non-empty array'),
        ({"slug": "f", "steps": [{"slug": 3}]}, 'string "slug"'),
        ({"slug": "f", "steps": [{"slug": "1a"}]}, "step slug '1a' must match"),
        ({"slug": "f", "steps": [{"slug": "run"}]}, "'run' is reserved"),
        ({"slug": "f", "steps": [{"slug": "a"}, {"slug": "a"}]}, "duplicate step slug 'a'"),
        (
            {"slug": "f", "steps": [{"slug": "a", "depends_on": ["z"]}]},
            "depends on unknown step 'z'",
        ),
        (
            {"slug": "f", "steps": [{"slug": "a", "depends_on": ["a"]}]},
            "step 'a' depends on itself",
        ),
        ({"slug": "f", "steps": [{"slug": "a", "depends_on": "b"}]}, "depends_on must be an array"),
        ({"slug": "f", "steps": [{"slug": "a"}, {"slug": "b", "depends_on": ["a", "a"]}]}, "twice"),
        ({"slug": "f", "steps": [{"slug": "a", "max_attempts": 0}]}, "max_attempts must be"),
        ({"slug": "f", "steps": [{"slug": "a", "max_attempts": 1.5}]}, "max_attempts must be"),
        ({"slug": "f", "steps": [{"slug": "a", "base_delay": "1"}]}, "base_delay must be"),
        ({"slug": "f", "steps": [{"slug": "a", "timeout": -1}]}, "timeout must be"),
        ({"slug": "f", "steps": [{"slug": "a"}], "output_step": "nope"}, 'output_step "nope"'),
        (
            {
                "slug": "f",
                "steps": [
                    {"slug": "a", "depends_on": ["c"]},
                    {"slug": "b", "depends_on": ["a"]},
                    {"slug": "c", "depends_on": ["b"]},
                    {"slug": "root"},
                ],
            },
            "cycle through a, b, c",
        ),
    ],
)
async def test_define_flow_refuses_a_bad_definition_with_a_clear_error(
    conn: Any, definition: Any, message: str
) -> None:
    error = await definition_error(conn, definition)
    assert error.sqlstate == "PF400"
    assert message in str(error)
    assert await conn.fetchval("select count(*) from pgflow.flows") == 0


async def test_define_flow_from_two_connections_at_once_creates_one_flow(db_url: str) -> None:
    connections = [await asyncpg.connect(db_url) for _ in range(4)]
    try:
        definition = orjson.dumps(DIAMOND).decode()
        await asyncio.gather(
            *(c.fetchval("select pgflow.define_flow($1::jsonb)", definition) for c in connections)
        )
        assert await connections[0].fetchval("select count(*) from pgflow.steps") == 4
    finally:
        for c in connections:
            await c.close()


async def test_get_flow_returns_the_shape_and_null_for_an_unknown_flow(conn: Any) -> None:
    shape = await define(conn, DIAMOND)
    assert await conn.fetchval("select pgflow.get_flow('diamond')") == shape
    assert await conn.fetchval("select pgflow.get_flow('nope')") is None


async def test_define_flow_is_callable_with_named_arguments(conn: Any) -> None:
    shape = await conn.fetchval(
        "select pgflow.define_flow(definition => $1::jsonb)",
        {"slug": "n", "steps": [{"slug": "a"}]},
    )
    assert shape["slug"] == "n"


def chain(n: int, slug: str = "long") -> dict[str, Any]:
    return {"slug": slug, "steps": [{"slug": "s0"}] + [
        {"slug": f"s{i}", "depends_on": [f"s{i - 1}"]} for i in range(1, n)]}


async def define_counting(conn: Any, definition: Any) -> tuple[dict[str, Any], int]:
    """define_flow, and how many times it validated and normalised a document: 0 when the
    stored hash of the same document answered."""
    # the "xact" view holds what this backend has not flushed yet, maybe from earlier
    # transactions too; nothing is flushed inside a transaction, so the difference is exact
    calls = (
        "select coalesce(sum(calls), 0)::int from pg_stat_xact_user_functions "
        "where schemaname = 'pgflow' and funcname = '_normalise_flow'"
    )
    async with conn.transaction():
        await conn.execute("set local track_functions = 'pl'")
        before = await conn.fetchval(calls)
        shape = await conn.fetchval("select pgflow.define_flow($1::jsonb)", definition)
        after = await conn.fetchval(calls)
    return shape, after - before


async def row_versions(conn: Any) -> list[str]:
    return [r[0] for r in await conn.fetch(
        "select xmin::text from pgflow.flows union all select xmin::text from pgflow.steps")]


async def test_redefining_an_unchanged_2000_step_flow_does_no_work(conn: Any) -> None:
    definition = chain(2000)
    shape, calls = await define_counting(conn, definition)
    assert calls == 1
    assert len(shape["steps"]) == 2000
    assert shape["output_step"] == "s1999"
    before = await row_versions(conn)
    again, calls = await define_counting(conn, definition)
    assert (again, calls) == (shape, 0)
    assert await row_versions(conn) == before
    # the same shape in another document is checked (and accepted) the long way
    reordered = {**definition, "steps": definition["steps"][::-1]}
    assert await define_counting(conn, reordered) == (shape, 1)
    assert await row_versions(conn) == before


async def test_a_flow_defined_before_the_hash_existed_gets_it_on_its_next_definition(
    conn: Any,
) -> None:
    shape = await define(conn, DIAMOND)
    await conn.execute("update pgflow.flows set definition_hash = null")
    assert await define_counting(conn, DIAMOND) == (shape, 1)
    assert await define_counting(conn, DIAMOND) == (shape, 0)


async def test_a_large_flow_keeps_the_shape_errors(conn: Any) -> None:
    definition = chain(2000)
    await define(conn, definition)
    changed = {**definition, "steps": [*definition["steps"][:-1],
                                       {"slug": "s1999", "depends_on": ["s0"]}]}
    assert (await define(conn, changed))["version"] == 2
    looped = chain(2000, "looped")
    looped["steps"][0] = {"slug": "s0", "depends_on": ["s1999"]}
    error = await definition_error(conn, looped)
    assert error.sqlstate == "PF400"
    assert "the steps contain a cycle through s0, s1, s10, s100, s1000," in str(error)


async def test_define_flow_stores_the_dependents_of_each_step_in_flow_order(conn: Any) -> None:
    await define(conn, {"slug": "fan", "steps": [
        {"slug": "z", "depends_on": ["root"]}, {"slug": "root"},
        {"slug": "a", "depends_on": ["root"]}, {"slug": "m", "depends_on": ["a", "root"]}]})
    rows = await conn.fetch("select step_slug, step_index, depends_on, dependents "
                            "from pgflow.steps order by step_index")
    assert [tuple(r) for r in rows] == [
        ("z", 1, ["root"], []),
        ("root", 2, [], ["z", "a", "m"]),
        ("a", 3, ["root"], ["m"]),
        ("m", 4, ["a", "root"], []),
    ]
