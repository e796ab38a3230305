"""Every numeric argument of the SQL API has a documented range; outside it, PF400 names it."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from tests.sql._helpers import DIAMOND, claim, define, fail, start

# (value, what the message shows): finite too large, infinities, NaN, negative, zero, too small
BAD_LEASES = [
    (86400.001, "86400.001"),
    (1e300, "1e+300"),
    (float("inf"), "Infinity"),
    (float("-inf"), "-Infinity"),
    (float("nan"), "NaN"),
    (-1.0, "-1"),
    (0.0, "0"),
    (0.099, "0.099"),
    (None, "null"),
]
BAD_COUNTS = [(0, "0"), (-1, "-1"), (1001, "1001"), (2**31 - 1, "2147483647"), (None, "null")]


async def refusal(conn: Any, query: str, *args: Any) -> str:
    with pytest.raises(asyncpg.PostgresError) as info:
        await conn.fetch(query, *args)
    assert info.value.sqlstate == "PF400", info.value
    return str(info.value)


@pytest.mark.parametrize(("lease", "shown"), BAD_LEASES, ids=[b[1] for b in BAD_LEASES])
async def test_claim_tasks_refuses_a_lease_outside_a_tenth_of_a_second_to_a_day(
    conn: Any, lease: float | None, shown: str
) -> None:
    await define(conn, DIAMOND)
    await start(conn, "diamond")
    message = await refusal(conn, "select * from pgflow.claim_tasks('w', 10, null, $1)", lease)
    assert message == (
        f"claim_tasks: lease_seconds must be a number of seconds from 0.1 to 86400, not {shown}"
    )
    # nothing was leased
    assert len(await claim(conn)) == 1


async def test_claim_tasks_accepts_the_ends_of_the_lease_range(conn: Any) -> None:
    await define(conn, {"slug": "pair", "steps": [{"slug": "x"}, {"slug": "y"}]})
    await start(conn, "pair")
    short = await conn.fetch("select * from pgflow.claim_tasks('w', 1, null, 0.1)")
    day = await conn.fetch("select * from pgflow.claim_tasks('w', 1, null, 86400)")
    assert len(short) == len(day) == 1
    expires = await conn.fetchval(
        "select max(lease_expires_at - clock_timestamp()) from pgflow.step_states"
    )
    assert 86000 < expires.total_seconds() <= 86400


@pytest.mark.parametrize(("count", "shown"), BAD_COUNTS, ids=[b[1] for b in BAD_COUNTS])
async def test_claim_tasks_refuses_max_tasks_outside_1_to_1000(
    conn: Any, count: int | None, shown: str
) -> None:
    message = await refusal(conn, "select * from pgflow.claim_tasks('w', $1)", count)
    assert message == f"claim_tasks: max_tasks must be an integer from 1 to 1000, not {shown}"


@pytest.mark.parametrize("worker", [None, ""])
async def test_claim_tasks_refuses_a_missing_worker_id(conn: Any, worker: str | None) -> None:
    message = await refusal(conn, "select * from pgflow.claim_tasks($1, 1)", worker)
    assert "claim_tasks: worker_id must be a non-empty string" in message


@pytest.mark.parametrize(("lease", "shown"), BAD_LEASES, ids=[b[1] for b in BAD_LEASES])
async def test_extend_leases_refuses_a_lease_outside_a_tenth_of_a_second_to_a_day(
    conn: Any, lease: float | None, shown: str
) -> None:
    await define(conn, DIAMOND)
    await start(conn, "diamond")
    (task,) = await claim(conn)
    before = await conn.fetchval("select lease_expires_at from pgflow.step_states "
                                 "where leased_by = 'w1'")
    message = await refusal(
        conn, "select pgflow.extend_leases('w1', $1, $2, $3)",
        [task["run_id"]], [task["step_slug"]], lease,
    )
    assert message == (
        f"extend_leases: lease_seconds must be a number of seconds from 0.1 to 86400, not {shown}"
    )
    after = await conn.fetchval("select lease_expires_at from pgflow.step_states "
                                "where leased_by = 'w1'")
    assert after == before


async def test_extend_leases_refuses_arrays_of_unequal_length(conn: Any) -> None:
    message = await refusal(
        conn, "select pgflow.extend_leases('w1', $1, $2)",
        ["00000000-0000-0000-0000-000000000000"], ["a", "b"],
    )
    assert "step_slugs must be as long as run_ids, not 2 against 1" in message


@pytest.mark.parametrize(("count", "shown"), [(0, "0"), (-5, "-5"), (10001, "10001"),
                                              (None, "null")])
async def test_list_runs_refuses_max_runs_outside_1_to_10000(
    conn: Any, count: int | None, shown: str
) -> None:
    message = await refusal(conn, "select * from pgflow.list_runs($1)", count)
    assert message == f"list_runs: max_runs must be an integer from 1 to 10000, not {shown}"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("max_attempts", 1001, "max_attempts must be an integer from 1 to 1000"),
        ("max_attempts", 1e300, "max_attempts must be an integer from 1 to 1000"),
        ("max_attempts", -1, "max_attempts must be an integer from 1 to 1000"),
        ("max_attempts", 0, "max_attempts must be an integer from 1 to 1000"),
        ("base_delay", 86400.5, "base_delay must be a number of seconds from 0 to 86400"),
        ("base_delay", -0.5, "base_delay must be a number of seconds from 0 to 86400"),
        ("base_delay", 1e300, "base_delay must be a number of seconds from 0 to 86400"),
        ("base_delay", 1e-7, "base_delay must be a number of seconds from 0 to 86400"),
        ("timeout", 86401, "timeout must be a whole number of seconds from 1 to 86400"),
        ("timeout", 0, "timeout must be a whole number of seconds from 1 to 86400"),
        ("timeout", 1.5, "timeout must be a whole number of seconds from 1 to 86400"),
    ],
)
async def test_define_flow_refuses_step_options_out_of_range(
    conn: Any, option: str, value: float, message: str
) -> None:
    definition = {"slug": "f", "steps": [{"slug": "a", option: value}]}
    error = await refusal(conn, "select pgflow.define_flow($1::jsonb)", definition)
    assert f"invalid flow 'f': step 'a': {message}" in error


async def test_define_flow_refuses_a_base_delay_too_small_for_a_double_instead_of_crashing(
    conn: Any,
) -> None:
    # JSON numbers are exact; 1e-400 has no double precision value
    error = await refusal(
        conn, "select pgflow.define_flow($1::text::jsonb)",
        '{"slug": "f", "steps": [{"slug": "a", "base_delay": 1e-400}]}',
    )
    assert "base_delay must be a number of seconds from 0 to 86400" in error


async def test_define_flow_accepts_whole_numbers_written_with_a_fraction(conn: Any) -> None:
    shape = await define(conn, {"slug": "f", "steps": [{"slug": "a", "max_attempts": 2.0,
                                                        "timeout": 30.0}]})
    assert (shape["steps"][0]["max_attempts"], shape["steps"][0]["timeout"]) == (2, 30)


async def test_a_late_attempt_of_the_largest_options_retries_after_at_most_30_days(
    conn: Any,
) -> None:
    """base_delay * 2^(attempt-1) overflows an interval after a few dozen attempts: the backoff
    is capped, so fail_step (and the batch it is reported in) never fails on it."""
    await define(conn, {"slug": "slow", "steps": [{"slug": "a", "max_attempts": 1000,
                                                    "base_delay": 86400}]})
    run_id = await start(conn, "slow")
    (task,) = await claim(conn)
    await conn.execute("update pgflow.step_states set attempt = 60 where run_id = $1", run_id)
    task = {**dict(task), "attempt": 60}
    assert await fail(conn, task) is True
    delay = await conn.fetchval(
        "select extract(epoch from available_at - clock_timestamp()) from pgflow.step_states "
        "where run_id = $1",
        run_id,
    )
    assert 2591000 < delay <= 2592000
