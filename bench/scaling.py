"""What limits one PostgreSQL primary: NOTIFY's commit serialisation, WAL per run, CPU per step.

    python bench/scaling.py [--seconds S] [--runs N] [--repeat R]

Three measurements on a private server (durable commits, as in production):

- ``notify``: C connections commit tiny transactions as fast as they can, with and without a
  ``pg_notify`` in each, one LISTENing connection present. PostgreSQL serialises the commits of
  notifying transactions (one global lock while a transaction queues its notifications), so the
  ratio shows how much of the primary's commit rate NOTIFY leaves.
- ``engine``: N no-op diamond runs drained by the engine's floor (claim_tasks + report_steps in
  batches, as bench/engine_floor.py): WAL bytes per run and per step (``pg_current_wal_lsn``),
  and the server's CPU per step in µs (the postmaster's children, from /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

import asyncpg
from _common import emit, machine, private_server, summary
from engine_floor import drive, seed

TICKS = os.sysconf("SC_CLK_TCK")


def _children_cpu_seconds(parent: int) -> float:
    """CPU seconds used so far by ``parent``'s children (the server's backends): the live ones'
    own time, plus what the exited ones left in the parent's cutime/cstime."""
    own = (Path("/proc") / str(parent) / "stat").read_text().rsplit(")", 1)[1].split()
    total = int(own[13]) + int(own[14])
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:  # ppid
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / TICKS


async def _postmaster_pid(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        directory = await conn.fetchval("show data_directory")
    finally:
        await conn.close()
    pid_file = Path(directory, "postmaster.pid")
    return int(pid_file.read_text().split()[0])  # noqa: ASYNC240 (a few bytes, once)


async def commit_rate(url: str, connections: int, seconds: float, notify: bool) -> float:
    """Transactions per second of ``connections`` clients, each committing one insert (and one
    pg_notify) per transaction, for ``seconds``."""
    setup = await asyncpg.connect(url)
    await setup.execute("create table if not exists bench_commits (n bigint)")
    listener = await asyncpg.connect(url)
    await listener.add_listener("bench_scaling", lambda *_: None)
    statement = "insert into bench_commits values ($1)"
    if notify:
        statement = f"with i as ({statement}) select pg_notify('bench_scaling', 'x')"
    deadline = time.monotonic() + seconds
    counts = [0] * connections

    async def client(index: int) -> None:
        conn = await asyncpg.connect(url)
        try:
            while time.monotonic() < deadline:
                await conn.execute(statement, index)
                counts[index] += 1
        finally:
            await conn.close()

    started = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(connections)))
    elapsed = time.monotonic() - started
    await listener.close()
    await setup.execute("truncate bench_commits")
    await setup.close()
    return sum(counts) / elapsed


async def engine_costs(url: str, runs: int) -> dict[str, float]:
    await seed(url, runs)
    postmaster = await _postmaster_pid(url)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("checkpoint")
        wal_before = await conn.fetchval("select pg_current_wal_lsn()")
        cpu_before = _children_cpu_seconds(postmaster)
        rate = await drive(url, 8, 64, runs * 4)
        cpu_after = _children_cpu_seconds(postmaster)
        wal_bytes = await conn.fetchval(
            "select pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)", wal_before)
    finally:
        await conn.close()
    steps = runs * 4
    return {
        "steps_per_s": rate,
        "wal_bytes_per_run": float(wal_bytes) / runs,
        "wal_bytes_per_step": float(wal_bytes) / steps,
        "server_cpu_us_per_step": 1_000_000 * (cpu_after - cpu_before) / steps,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per commit-rate point")
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--connections", default="1,8,32")
    args = parser.parse_args()
    levels = [int(c) for c in args.connections.split(",")]
    notify: dict[str, list[float]] = {}
    engine: dict[str, list[float]] = {}
    for _ in range(args.repeat):
        with private_server() as url:
            for c in levels:
                plain = await commit_rate(url, c, args.seconds, notify=False)
                notified = await commit_rate(url, c, args.seconds, notify=True)
                notify.setdefault(f"commits_per_s_{c}_plain", []).append(plain)
                notify.setdefault(f"commits_per_s_{c}_notify", []).append(notified)
                notify.setdefault(f"notify_ratio_{c}", []).append(notified / plain)
            for key, value in (await engine_costs(url, args.runs)).items():
                engine.setdefault(key, []).append(value)
    emit({
        "benchmark": "scaling",
        "repeat": args.repeat,
        "runs": args.runs,
        "notify": {k: summary(v) if "ratio" not in k else {
            key: round(val, 3) for key, val in zip(("min", "median", "max"),
                                                   (min(v), sorted(v)[len(v) // 2], max(v)),
                                                   strict=True)} for k, v in notify.items()},
        "engine": {k: summary(v) for k, v in engine.items()},
        "machine": machine(),
    })


if __name__ == "__main__":
    asyncio.run(main())
