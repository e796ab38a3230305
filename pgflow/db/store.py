"""Every SQL call PGFlow makes, over a connection pool.

The engine's logic lives in the SQL functions; these methods only call them, batching where
many calls share a transaction. Whatever fails comes out as a PGFlow error
(``translation.py``): the callers never see asyncpg.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from pgflow.db.coalescer import Coalescer
from pgflow.db.connection import create_pool, dumps
from pgflow.db.json_values import UnstorableJSONError, encode_json
from pgflow.db.translation import translate_errors
from pgflow.errors import (
    DatabaseUnavailableError,
    PGFlowError,
    UnknownFlowError,
    ValueRejectedError,
)

DEFAULT_LEASE = 30.0  # seconds
MIN_LEASE, MAX_LEASE = 0.1, 86400.0  # seconds: the leases claim_tasks accepts
MAX_CLAIM_TASKS = 1000  # claim_tasks' bound on max_tasks
DEFAULT_POOL_SIZE = 10
MAX_RUN_BATCH = 256  # run_flow requests started in one transaction (group commit)
# Subscriptions' first reads in one query. Each position brings up to an outbox's worth of
# events into the gateway, so 16, one query at a time, bounds what replays hold at once near
# what the pool's connections did with one read each.
MAX_REPLAY_BATCH = 16
PRUNE_BATCH = 1000  # runs per prune_runs call: one short transaction
MAX_PRUNE_BATCH = 10000  # prune_runs' bound on batch_size
MAX_PRUNE_AGE = timedelta(days=36500)  # prune_runs' bound on older_than


@dataclass(frozen=True, slots=True)
class Task:
    """A leased step: what a worker needs to run its handler and report back."""

    run_id: uuid.UUID
    flow_slug: str
    step_slug: str
    attempt: int
    input: Any
    timeout: int
    max_attempts: int

    @property
    def map_element(self) -> tuple[str, int] | None:
        """A map step's element task ('square[17]'): its map step and index; else None."""
        if not self.step_slug.endswith("]"):
            return None
        slug, _, index = self.step_slug[:-1].partition("[")
        return slug, int(index)


@dataclass(frozen=True, slots=True)
class RunRequest:
    """A run to start: ``Store.run_flow``'s arguments, its input as JSON text."""

    flow_slug: str
    input_json: str
    owner: str | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class StartedRun:
    """A run ``Store.start_run`` answered: new, or the one its idempotency key started."""

    run_id: uuid.UUID
    created: bool
    version: int = 1  # the version of its flow the run is on


def _report_arrays(done: list[Completion], failed: list[Failure]) -> list[list[Any]]:
    """report_steps' five arrays: run_ids, step_slugs, attempts, outputs (completions' JSON
    text, null for failures), errors (null for completions)."""
    items: list[Completion | Failure] = [*done, *failed]
    return [
        [i.run_id for i in items],
        [i.step_slug for i in items],
        [i.attempt for i in items],
        [dumps(i.output) for i in done] + [None] * len(failed),
        [None] * len(done) + [i.error for i in failed],
    ]


def _unknown_flow(flow_slug: str) -> UnknownFlowError:
    # the words run_flow raises (PF404) with, the slug quoted as quote_literal quotes it
    return UnknownFlowError("unknown flow '" + flow_slug.replace("'", "''") + "'")


@dataclass(frozen=True, slots=True)
class Completion:
    run_id: uuid.UUID
    step_slug: str
    attempt: int
    output: Any


@dataclass(frozen=True, slots=True)
class Failure:
    run_id: uuid.UUID
    step_slug: str
    attempt: int
    error: str


@dataclass(frozen=True, slots=True)
class RunReplay:
    """A run's access facts and its events after some seq (``Store.get_run_replay``)."""

    flow_slug: str
    owner: str | None
    last_seq: int
    events: list[tuple[int, str]]  # (seq, event as JSON text)
    truncated: bool = False  # max_bytes left events of the range out
    flow_version: int = 1  # the version of its flow the run is on


# Many runs' replays (Store.get_run_replays), one per position: the run's access facts and
# its events with since < seq <= until as JSON text, those that fit in max_bytes (null: no
# limit) counted from the first, which always fits: a log read of large events brings about one
# outbox's worth into the gateway, not a whole page of them.
_REPLAYS = """
with q as (
  select * from unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[])
    with ordinality as q (run_id, since, until, max_bytes, o)
), printed as (
  select e.pos, e.seq, e.event::text as text from pgflow.get_runs_events($1, $2, $3) as e
), sized as (
  select p.pos, p.seq, p.text, coalesce(sum(octet_length(p.text)) over (
      partition by p.pos order by p.seq rows between unbounded preceding and 1 preceding), 0)
    as before
  from printed as p
), per_position as (
  select s.pos,
    array_agg(s.seq order by s.seq) filter (where q.max_bytes is null or s.before < q.max_bytes)
      as seqs,
    array_agg(s.text order by s.seq) filter (where q.max_bytes is null or s.before < q.max_bytes)
      as events,
    count(*) as total
  from sized as s join q on q.o = s.pos
  group by s.pos
)
select q.o, r.flow_slug, r.flow_version, r.owner, r.last_seq, p.seqs, p.events,
  coalesce(p.total, 0) as total
from q
join pgflow.runs as r on r.run_id = q.run_id
left join per_position as p on p.pos = q.o
"""


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """``Store.get_run_replay``'s arguments."""

    run_id: uuid.UUID
    since: int = 0
    until: int | None = None
    max_bytes: int | None = None


class Store:
    """The engine's SQL API over a connection pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        # Concurrent run_flow calls share a transaction, a commit and a notification. One batch
        # in flight at a time: fewer, larger transactions beat two in flight on every measure
        # at 50 users (runs/s, p50, CPU per run; BENCHMARKS.md), the database's commits being
        # the cost that batching saves.
        self.run_starter: Coalescer[RunRequest, StartedRun] = Coalescer(
            self._start_batch, max_batch=MAX_RUN_BATCH, max_in_flight=1
        )
        # concurrent subscriptions' first reads share a query
        self.replay_reader: Coalescer[ReplayRequest, RunReplay | None] = Coalescer(
            self.get_run_replays, max_batch=MAX_REPLAY_BATCH, max_in_flight=1
        )

    @classmethod
    async def open(cls, url: str, *, min_size: int = 1, max_size: int = DEFAULT_POOL_SIZE,
                   statement_cache: bool = True) -> Store:
        """Raises DatabaseUnavailableError or ConfigurationError (``connection.create_pool``).

        ``statement_cache=False``: ``url`` goes through PgBouncer in transaction mode.
        """
        return cls(await create_pool(url, min_size=min_size, max_size=max_size,
                                     statement_cache=statement_cache))

    async def close(self) -> None:
        await self.pool.close()

    def terminate(self) -> None:
        """Closes every connection at once, without waiting for the server (it may be gone)."""
        self.pool.terminate()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        with translate_errors():
            connection = await self.pool.acquire()
        try:
            with translate_errors():
                yield connection
        finally:
            await self._release(connection)

    async def _release(self, connection: asyncpg.Connection) -> None:
        """Gives a connection back to the pool, which resets it first.

        When the server goes away (a restart) just after the work on the connection was done,
        the reset fails, even with asyncpg's InternalClientError ("cannot switch to state 15;
        another operation is in progress"). The pool has then terminated the connection and
        will open a new one; the work itself committed or not on its own, so its result (or
        its error) is what the call returns: a failed reset is no error of the caller's.
        """
        with contextlib.suppress(Exception):
            await self.pool.release(connection)

    # -- flows --------------------------------------------------------------------------------

    async def define_flow(self, definition: dict[str, Any]) -> dict[str, Any]:
        async with self._connection() as connection:
            shape: dict[str, Any] = await connection.fetchval(
                "select pgflow.define_flow($1::jsonb)", definition
            )
            return shape

    async def get_flow(self, flow_slug: str, version: int | None = None) -> dict[str, Any] | None:
        """The flow's newest shape, or its ``version``; None when unknown."""
        async with self._connection() as connection:
            shape: dict[str, Any] | None = await connection.fetchval(
                "select pgflow.get_flow($1, $2)", flow_slug, version
            )
            return shape

    # -- runs ---------------------------------------------------------------------------------

    async def run_flow(self, flow_slug: str, input: Any, *, owner: str | None = None,
                       idempotency_key: str | None = None) -> uuid.UUID:
        """Starts a run (``start_run``), answering its run_id alone."""
        started = await self.start_run(flow_slug, input, owner=owner,
                                       idempotency_key=idempotency_key)
        return started.run_id

    async def start_run(self, flow_slug: str, input: Any, *, owner: str | None = None,
                        idempotency_key: str | None = None) -> StartedRun:
        """Starts a run, or with an idempotency key answers the run that key already started
        (``created`` False). Concurrent calls are started together, in one transaction (group
        commit, ``coalescer.py``); each returns once its run is committed.

        Raises UnknownFlowError for an unknown flow, ValueRejectedError for an input the
        database refuses, IdempotencyConflictError for a key that started a run with another
        input (that call alone, each).
        """
        try:  # here, so that a value that cannot be stored fails this call only
            input_json = encode_json(input).decode()
        except UnstorableJSONError as error:
            raise ValueRejectedError(f"the input cannot be stored as JSON: {error}") from None
        return await self.run_starter.submit(
            RunRequest(flow_slug, input_json, owner, idempotency_key))

    async def start_runs(self, requests: Sequence[RunRequest]) -> list[StartedRun | None]:
        """Starts runs in one transaction (SQL start_runs): each run, or None for an unknown
        flow."""
        async with self._connection() as connection:
            rows = await connection.fetch(
                "select run_id, created, version"
                " from pgflow.start_runs($1, $2::text[]::jsonb[], $3, $4)",
                [r.flow_slug for r in requests],
                [r.input_json for r in requests],
                [r.owner for r in requests],
                [r.idempotency_key for r in requests]
                if any(r.idempotency_key is not None for r in requests) else None,
            )
        return [StartedRun(row[0], row[1], row[2]) if row[0] is not None else None
                for row in rows]

    async def _start_batch(
        self, requests: Sequence[RunRequest]
    ) -> list[StartedRun | BaseException]:
        try:
            run_ids = await self.start_runs(requests)
        except DatabaseUnavailableError:
            raise  # nothing was started; every request of the batch fails the same way
        except PGFlowError as error:
            if len(requests) == 1:
                return [error]
            # one request's value may have failed the whole transaction: each alone, so that
            # it fails alone (rare: the gateway checks what it can before it gets here)
            return [await self._start_alone(request) for request in requests]
        return [
            run_id if run_id is not None else _unknown_flow(request.flow_slug)
            for request, run_id in zip(requests, run_ids, strict=True)
        ]

    async def _start_alone(self, request: RunRequest) -> StartedRun | BaseException:
        try:
            (run_id,) = await self.start_runs([request])
        except PGFlowError as error:
            return error
        return run_id if run_id is not None else _unknown_flow(request.flow_slug)

    async def cancel_run(self, run_id: uuid.UUID, reason: str | None = None) -> bool:
        """Cancels a run still going; False when it had ended. Raises UnknownRunError."""
        async with self._connection() as connection:
            cancelled: bool = await connection.fetchval(
                "select pgflow.cancel_run($1, $2)", run_id, reason)
            return cancelled

    async def submit_input(self, run_id: uuid.UUID, step_slug: str, value: Any) -> bool:
        """Gives a waiting input step its value (not checked against its schema here); False
        when the step is not waiting. Raises UnknownRunError, UnknownStepError,
        ValueRejectedError (a value orjson or jsonb cannot hold)."""
        try:
            value_json = encode_json(value).decode()
        except UnstorableJSONError as error:
            raise ValueRejectedError(f"the value cannot be stored as JSON: {error}") from None
        async with self._connection() as connection:
            applied: bool = await connection.fetchval(
                "select pgflow.submit_input($1, $2, $3::text::jsonb)", run_id, step_slug,
                value_json)
            return applied

    async def complete_step(self, run_id: uuid.UUID, step_slug: str, output: Any,
                            worker_id: str | None, attempt: int | None) -> bool:
        """Completes one leased step (an HTTP step's callback); False when stale: the lease of
        that holder and attempt is gone. Raises ValueRejectedError for an output jsonb cannot
        hold."""
        try:
            output_json = encode_json(output).decode()
        except UnstorableJSONError as error:
            raise ValueRejectedError(f"the output cannot be stored as JSON: {error}") from None
        async with self._connection() as connection:
            applied: bool = await connection.fetchval(
                "select pgflow.complete_step($1, $2, $3::text::jsonb, $4, $5)",
                run_id, step_slug, output_json, worker_id, attempt)
            return applied

    async def fail_step(self, run_id: uuid.UUID, step_slug: str, error: str,
                        worker_id: str | None, attempt: int | None, *,
                        retry: bool = True) -> bool:
        """Fails one leased step's attempt (retried as its options say, or with ``retry``
        False, for good); False when stale."""
        async with self._connection() as connection:
            applied: bool = await connection.fetchval(
                "select pgflow.fail_step($1, $2, $3, $4, $5, $6)",
                run_id, step_slug, error, worker_id, attempt, retry)
            return applied

    async def retry_run(self, run_id: uuid.UUID) -> bool:
        """Queues a failed or cancelled run's unfinished steps again; False for a run in
        another state. Raises UnknownRunError."""
        async with self._connection() as connection:
            retried: bool = await connection.fetchval("select pgflow.retry_run($1)", run_id)
            return retried

    async def get_run(self, run_id: uuid.UUID) -> dict[str, Any] | None:
        async with self._connection() as connection:
            run: dict[str, Any] | None = await connection.fetchval(
                "select pgflow.get_run($1)", run_id
            )
            return run

    async def get_run_owner(self, run_id: uuid.UUID) -> tuple[bool, str | None]:
        """(whether the run exists, its owner)."""
        async with self._connection() as connection:
            row = await connection.fetchrow(
                "select owner from pgflow.runs where run_id = $1", run_id
            )
            return (row is not None, row["owner"] if row is not None else None)

    async def get_run_events(
        self, run_id: uuid.UUID, since: int = 0, until: int | None = None
    ) -> list[dict[str, Any]]:
        async with self._connection() as connection:
            rows = await connection.fetch(
                "select e from pgflow.get_run_events($1, $2, $3) as e", run_id, since, until
            )
            return [row[0] for row in rows]

    async def get_run_events_json(
        self, run_id: uuid.UUID, since: int = 0, until: int | None = None,
        *, max_bytes: int | None = None,
    ) -> tuple[list[tuple[int, str]], bool]:
        """(seq, event as JSON text), what the gateway forwards without decoding, and whether
        ``max_bytes`` cut the read short (it always returns the first event, however large)."""
        (replay,) = await self.get_run_replays([ReplayRequest(run_id, since, until, max_bytes)])
        return (replay.events, replay.truncated) if replay is not None else ([], False)

    async def list_runs(
        self,
        *,
        max_runs: int = 20,
        flow_slug: str | None = None,
        owner: str | None = None,
        statuses: Sequence[str] | None = None,
        started_after: datetime | None = None,
        started_before: datetime | None = None,
        after: tuple[datetime, uuid.UUID] | None = None,
    ) -> list[dict[str, Any]]:
        """Runs newest first, filtered; ``after`` (started_at, run_id) continues a listing."""
        async with self._connection() as connection:
            rows = await connection.fetch(
                "select r from pgflow.list_runs($1, $2, $3, $4, $5, $6, $7, $8) as r",
                max_runs, flow_slug, owner,
                list(statuses) if statuses is not None else None,
                started_after, started_before,
                after[0] if after is not None else None,
                after[1] if after is not None else None,
            )
            return [row[0] for row in rows]

    async def prune_runs(self, older_than: timedelta, batch_size: int = PRUNE_BATCH) -> int:
        """Deletes at most ``batch_size`` runs finished more than ``older_than`` ago, with their
        steps and events, in one transaction; returns how many (``pgflow.prune_runs``)."""
        async with self._connection() as connection:
            pruned: int = await connection.fetchval(
                "select pgflow.prune_runs($1, $2)", older_than, batch_size
            )
            return pruned

    # -- tasks (the worker's side) --------------------------------------------------------------

    async def claim_tasks(
        self,
        worker_id: str,
        max_tasks: int,
        *,
        flow_slugs: Sequence[str] | None = None,
        lease_seconds: float = DEFAULT_LEASE,
    ) -> list[Task]:
        async with self._connection() as connection:
            rows = await connection.fetch(
                "select * from pgflow.claim_tasks($1, $2, $3, $4)",
                worker_id,
                min(max_tasks, MAX_CLAIM_TASKS),  # more than that: the rest at the next claim
                list(flow_slugs) if flow_slugs is not None else None,
                lease_seconds,
            )
            return [Task(**dict(row)) for row in rows]

    async def report(
        self,
        worker_id: str,
        completions: Iterable[Completion] = (),
        failures: Iterable[Failure] = (),
    ) -> tuple[list[bool], list[bool]]:
        """Completes and fails many steps in one call: one transaction, one NOTIFY.

        Returns, for each input, whether it was applied (False: a stale report, e.g. the
        lease was lost).

        Each output travels as its JSON text (``text[]``, cast to ``jsonb[]`` in the query):
        bound as ``jsonb[]``, asyncpg would read a list output as array dimensions. A JSON
        null is the text ``'null'``, never SQL NULL (which marks a failure's slot).
        """
        done = list(completions)
        failed = list(failures)
        if not done and not failed:
            return [], []
        async with self._connection() as connection:
            applied: list[bool] = await connection.fetchval(
                "select pgflow.report_steps($1, $2, $3, $4, $5::text[]::jsonb[], $6)",
                worker_id, *_report_arrays(done, failed),
            )
        return applied[: len(done)], applied[len(done) :]

    async def report_and_claim(
        self,
        worker_id: str,
        completions: Iterable[Completion] = (),
        failures: Iterable[Failure] = (),
        *,
        max_tasks: int,
        flow_slugs: Sequence[str] | None = None,
        lease_seconds: float = DEFAULT_LEASE,
    ) -> tuple[list[bool], list[bool], list[Task]]:
        """``report`` and then ``claim_tasks`` (up to ``max_tasks``) in one call and one
        transaction: the steps the report made ready go straight to this worker."""
        done = list(completions)
        failed = list(failures)
        async with self._connection() as connection:
            rows = await connection.fetch(
                "select * from pgflow.report_and_claim("
                "$1, $2, $3, $4, $5::text[]::jsonb[], $6, $7, $8, $9)",
                worker_id, *_report_arrays(done, failed),
                min(max_tasks, MAX_CLAIM_TASKS),
                list(flow_slugs) if flow_slugs is not None else None,
                lease_seconds,
            )
        applied: list[bool] = rows[0]["applied"]
        tasks = [
            Task(row["run_id"], row["flow_slug"], row["step_slug"], row["attempt"], row["input"],
                 row["timeout"], row["max_attempts"])
            for row in rows if row["run_id"] is not None
        ]
        return applied[: len(done)], applied[len(done) :], tasks

    async def stream_steps(
        self, worker_id: str, items: Sequence[tuple[tuple[uuid.UUID, str, int], bytes]]
    ) -> list[bool]:
        """Appends running steps' chunks: each item is ((run_id, step_slug, attempt), its
        chunks as one JSON array's text). Returns, per item, whether it was written (False:
        the attempt no longer holds its lease)."""
        async with self._connection() as connection:
            applied: list[bool] = await connection.fetchval(
                "select pgflow.stream_steps($1, $2, $3, $4, $5::text[]::jsonb[])",
                worker_id,
                [key[0] for key, _ in items], [key[1] for key, _ in items],
                [key[2] for key, _ in items], [chunks.decode() for _, chunks in items],
            )
            return applied

    async def retry_delays(self, failures: Sequence[Failure]) -> list[float | None]:
        """Seconds until each reported failure's retry may be claimed, as the engine set it
        (``_fail_attempt``); None where the step is not waiting for that retry (its last
        attempt failed, or the retry was claimed already). The engine sends no NOTIFY when a
        backoff ends: the worker sets itself a timer instead.
        """
        if not failures:
            return []
        async with self._connection() as connection:
            rows = await connection.fetch(
                """
                select greatest(0, extract(epoch from s.available_at - clock_timestamp()))::float8
                from unnest($1::uuid[], $2::text[], $3::int[]) with ordinality
                  as t (run_id, step_slug, attempt, o)
                left join pgflow.step_states as s
                  on s.run_id = t.run_id and s.step_slug = t.step_slug
                 and s.attempt = t.attempt and s.status = 'retrying'
                 and s.lease_expires_at is null
                order by t.o
                """,
                [f.run_id for f in failures], [f.step_slug for f in failures],
                [f.attempt for f in failures],
            )
        return [row[0] for row in rows]

    async def extend_leases(
        self,
        worker_id: str,
        tasks: Sequence[tuple[uuid.UUID, str]],
        lease_seconds: float = DEFAULT_LEASE,
    ) -> int:
        if not tasks:
            return 0
        async with self._connection() as connection:
            kept: int = await connection.fetchval(
                "select pgflow.extend_leases($1, $2, $3, $4)",
                worker_id,
                [t[0] for t in tasks],
                [t[1] for t in tasks],
                lease_seconds,
            )
            return kept

    async def release_tasks(
        self, worker_id: str, tasks: Sequence[tuple[uuid.UUID, str]] | None = None
    ) -> int:
        async with self._connection() as connection:
            released: int = await connection.fetchval(
                "select pgflow.release_tasks($1, $2, $3)",
                worker_id,
                [t[0] for t in tasks] if tasks is not None else None,
                [t[1] for t in tasks] if tasks is not None else None,
            )
            return released

    async def ping(self) -> None:
        async with self._connection() as connection:
            await connection.fetchval("select 1")

    # -- the gateway's reads ------------------------------------------------------------------

    async def get_run_replay(
        self, run_id: uuid.UUID, since: int = 0, until: int | None = None,
        *, max_bytes: int | None = None,
    ) -> RunReplay | None:
        """What a websocket subscription needs, in one round trip and one snapshot: the run's
        flow and owner (for the access check), its last seq, and its events after ``since``
        (up to ``until``) as JSON text. None for an unknown run. Concurrent calls share one
        query (``coalescer.py``).
        """
        return await self.replay_reader.submit(ReplayRequest(run_id, since, until, max_bytes))

    async def get_run_replays(
        self, requests: Sequence[ReplayRequest]
    ) -> list[RunReplay | None]:
        """Many runs' ``get_run_replay`` in one query, in order. Equal requests (sockets
        subscribing to the same run at once) are read once and share one result: a copy per
        socket of a run's large events is what the replay bounds are there to prevent."""
        unique = list(dict.fromkeys(requests))
        async with self._connection() as connection:
            rows = await connection.fetch(
                _REPLAYS,
                [r.run_id for r in unique], [r.since for r in unique],
                [r.until for r in unique], [r.max_bytes for r in unique],
            )
        found: dict[ReplayRequest, RunReplay] = {}
        for row in rows:
            events = list(zip(row["seqs"] or (), row["events"] or (), strict=True))
            found[unique[row["o"] - 1]] = RunReplay(
                flow_slug=row["flow_slug"], owner=row["owner"], last_seq=row["last_seq"],
                events=events, truncated=row["total"] > len(events),
                flow_version=row["flow_version"],
            )
        return [found.get(request) for request in requests]

    async def get_runs_events_json(
        self, reads: Sequence[tuple[uuid.UUID | str, int, int | None]]
    ) -> dict[str, list[tuple[int, str]]]:
        """Many runs' events in one query: for each (run_id, since, until), the events with
        ``since < seq <= until`` as (seq, JSON text), in seq order, keyed by the run id text.
        """
        result: dict[str, list[tuple[int, str]]] = {}
        if not reads:
            return result
        async with self._connection() as connection:
            rows = await connection.fetch(
                """
                select e.run_id::text, e.seq, e.event::text
                from pgflow.get_runs_events($1::uuid[], $2::bigint[], $3::bigint[]) as e
                """,
                [str(r[0]) for r in reads], [r[1] for r in reads], [r[2] for r in reads],
            )
        for run_id, seq, text in rows:
            result.setdefault(run_id, []).append((seq, text))
        return result

