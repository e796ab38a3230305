"""``Client`` and ``RunHandle``: start runs, await their outcome, follow their events, steer
them, straight over SQL and LISTEN (no gateway). docs/reference/python-client.md is the
reference.

One client holds one LISTEN connection (``_feed.py``), whatever the number of runs it follows,
and a small pool for its queries.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

from pgflow.client._feed import Feed
from pgflow.client._follow import Event, Follower
from pgflow.db.store import Store
from pgflow.errors import (
    FlowCancelledError,
    FlowFailedError,
    InputRejectedError,
    UnknownRunError,
    UnknownStepError,
)
from pgflow.input_schema import validate_input

APPLICATION_NAME = "pgflow-client"
POOL_SIZE = 4  # connections for queries; LISTEN has one more of its own
CONNECT_TIMEOUT = 10.0  # seconds
ENDED = ("completed", "failed", "cancelled")
_MAX_FLOW_SHAPES = 1024  # flow versions' shapes cached for submit(); a version never changes


def _with_application_name(url: str, name: str) -> str:
    """``url`` with ``application_name`` set, unless it sets one itself."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(key == "application_name" for key, _ in query):
        return url
    return urlunsplit(parts._replace(query=urlencode([*query, ("application_name", name)])))


def _not_open() -> RuntimeError:
    return RuntimeError("the client is not open: use `async with Client(url)` or "
                        "`await client.open()`")


def _run_uuid(run_id: uuid.UUID | str) -> uuid.UUID:
    if isinstance(run_id, uuid.UUID):
        return run_id
    try:
        return uuid.UUID(str(run_id))
    except ValueError:
        raise UnknownRunError(f"unknown run {run_id!r}: not a UUID") from None


def _outcome(run_id: str, status: str, output: Any, error: str | None,
             step_slug: str | None, reason: str | None) -> Any:
    if status == "completed":
        return output
    if status == "cancelled":
        raise FlowCancelledError(run_id, reason)
    raise FlowFailedError(run_id, error, step_slug)


def _outcome_of_event(event: Event) -> Any:
    return _outcome(event["run_id"], event["status"], event.get("output"), event.get("error"),
                    event.get("step_slug"), event.get("reason"))


def _outcome_of_snapshot(run: dict[str, Any]) -> Any:
    return _outcome(run["run_id"], run["status"], run.get("output"), run.get("error"),
                    run.get("failed_step"), run.get("cancel_reason"))


class Client:
    """Starts, follows and steers runs over SQL and LISTEN.

    Use it as ``async with Client(url) as client:``, or ``await client.open()`` then
    ``await client.close()`` (in an app's lifespan, say). It opens ``pool_size`` connections
    for queries and one LISTEN connection, on ``listen_database_url`` when the main URL goes
    through PgBouncer in transaction mode (then pass ``pgbouncer=True``). The pool's
    connections carry ``application_name`` (unless ``database_url`` sets one), the LISTEN
    connection ``application_name + ":listen"``.
    """

    def __init__(
        self,
        database_url: str,
        *,
        listen_database_url: str | None = None,
        application_name: str = APPLICATION_NAME,
        pool_size: int = POOL_SIZE,
        pgbouncer: bool = False,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, not {pool_size}")
        self.database_url = database_url
        self.listen_database_url = listen_database_url or database_url
        self.application_name = application_name
        self.pool_size = pool_size
        self.pgbouncer = pgbouncer
        self.connect_timeout = connect_timeout
        self._store: Store | None = None
        self._feed: Feed | None = None
        self._flows: dict[tuple[str, int], dict[str, Any]] = {}  # (slug, version) -> shape

    async def open(self) -> Client:
        """Connects: the pool, then the LISTEN connection.

        Raises:
            DatabaseUnavailableError: the server cannot be reached.
            ConfigurationError: it refused the connection, or a URL is malformed.
            RuntimeError: the client is open already.
        """
        if self._store is not None:
            raise RuntimeError("the client is open already")
        store = await Store.open(
            _with_application_name(self.database_url, self.application_name),
            min_size=1, max_size=self.pool_size, statement_cache=not self.pgbouncer,
        )
        feed = Feed(store, self.listen_database_url,
                    application_name=f"{self.application_name}:listen")
        try:
            await feed.start(timeout=self.connect_timeout)
        except BaseException:
            await store.close()
            raise
        self._store, self._feed = store, feed
        return self

    async def close(self) -> None:
        """Stops listening and closes the pool; waiting ``result()`` calls and ``events()``
        iterations raise ``ClientClosedError``. Idempotent."""
        store, feed = self._store, self._feed
        self._store = self._feed = None
        if feed is not None:
            await feed.stop()
        if store is not None:
            await store.close()

    async def __aenter__(self) -> Client:
        return await self.open()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    @property
    def store(self) -> Store:
        """The client's ``pgflow.db.store.Store`` (its pool), for the engine's other calls."""
        if self._store is None:
            raise _not_open()
        return self._store

    @property
    def feed(self) -> Feed:
        if self._feed is None:
            raise _not_open()
        return self._feed

    # -- runs -------------------------------------------------------------------------------

    async def start(self, flow_slug: str, input: Any = None, *,
                    idempotency_key: str | None = None, owner: str | None = None) -> RunHandle:
        """Starts a run of ``flow_slug`` and returns its handle once it is committed.

        With ``idempotency_key``, a second start with the same key (and owner) returns the run
        the first one started, while that run exists.

        Raises:
            UnknownFlowError: no flow with this slug.
            IdempotencyConflictError: the key was used with another input.
            ValueRejectedError: the input cannot be stored as JSON.
        """
        run_id = await self.store.run_flow(flow_slug, input, owner=owner,
                                           idempotency_key=idempotency_key)
        return RunHandle(self, run_id)

    def run(self, run_id: uuid.UUID | str) -> RunHandle:
        """A handle on an existing run (nothing is read until you use it)."""
        return RunHandle(self, _run_uuid(run_id))

    async def get_run(self, run_id: uuid.UUID | str) -> dict[str, Any] | None:
        """The run now (``pgflow.get_run``: status, input, output, steps, …); None for an
        unknown run."""
        try:
            key = _run_uuid(run_id)
        except UnknownRunError:
            return None
        return await self.store.get_run(key)

    async def result(self, run_id: uuid.UUID | str, *, timeout: float | None = None) -> Any:
        """The run's output once it completes.

        Raises:
            FlowFailedError: it failed (``.error``, ``.step_slug``).
            FlowCancelledError: it was cancelled (``.reason``).
            TimeoutError: it had not ended within ``timeout`` seconds (it goes on running).
            UnknownRunError: no such run.
        """
        key = _run_uuid(run_id)
        async with asyncio.timeout(timeout):
            run = await self.store.get_run(key)
            if run is None:
                raise UnknownRunError(f"unknown run {key}")
            if run["status"] in ENDED:
                return _outcome_of_snapshot(run)
            feed = self.feed
            follower = feed.follow(str(key), run["seq"], keep=False)
            try:
                feed.request_read(follower.run_id)
                while not follower.ended:
                    if follower.error is not None:
                        raise follower.error
                    follower.changed.clear()
                    await follower.changed.wait()
            finally:
                feed.unfollow(follower)
            assert follower.last is not None
            return _outcome_of_event(follower.last)

    async def events(self, run_id: uuid.UUID | str, *, since: int = 0) -> AsyncIterator[Event]:
        """Every event of the run with ``seq > since``, in order, each once: first those in
        its log, then live ones as they commit. Ends after the run's terminal event.

        Raises:
            UnknownRunError: no such run.
            ValueError: ``since`` is negative or past the run's last event.
        """
        key = _run_uuid(run_id)
        if since < 0:
            raise ValueError(f"since must be 0 or more, not {since}")
        feed = self.feed
        follower = feed.follow(str(key), since, keep=True)
        try:
            await self._first_read(follower, since)
            while True:
                while follower.events:
                    yield follower.events.popleft()
                if follower.ended:
                    return
                if follower.error is not None:
                    raise follower.error
                follower.changed.clear()
                await follower.changed.wait()
        finally:
            feed.unfollow(follower)

    async def _first_read(self, follower: Follower, since: int) -> None:
        """The first read of a follower placed at ``since``, made once it is registered: its
        run's last seq and events in one snapshot (``Store.get_run_replay``, shared with
        concurrent first reads). The live feed may have moved it on meanwhile."""
        feed = self.feed
        read_from = max(since - 1, 0)  # the event at `since` too: did it end the run?
        replay = await self.store.get_run_replay(_run_uuid(follower.run_id), read_from,
                                                 read_from + feed.page)
        if replay is None:
            raise UnknownRunError(f"unknown run {follower.run_id}")
        if since > replay.last_seq:
            raise ValueError(f"since {since} is past the last event of run "
                             f"{follower.run_id} (seq {replay.last_seq})")
        rows = [orjson.loads(text) for _seq, text in replay.events]
        feed.take_read(follower.run_id, read_from, rows,
                       complete=len(rows) < feed.page and not replay.truncated)

    # -- steering ---------------------------------------------------------------------------

    async def cancel(self, run_id: uuid.UUID | str, reason: str | None = None) -> bool:
        """Cancels a running run: its unfinished steps stop (a running handler is cancelled
        at its next heartbeat), then ``run:cancelled``. False when it had already ended.

        Raises:
            UnknownRunError: no such run.
        """
        return await self.store.cancel_run(_run_uuid(run_id), reason)

    async def submit(self, run_id: uuid.UUID | str, step_slug: str, value: Any) -> bool:
        """Gives a waiting input step its value, which becomes the step's output; its
        dependents start. The value is checked against the step's JSON Schema first.

        Returns False when the step is not waiting (not yet, no longer, or not an input step).

        Raises:
            InputRejectedError: ``value`` fails the schema (``.errors``: path and message).
            UnknownRunError, UnknownStepError: no such run, or no such step in its flow.
            ValueRejectedError: the value cannot be stored as JSON.
        """
        key = _run_uuid(run_id)
        run = await self.store.get_run(key)
        if run is None:
            raise UnknownRunError(f"unknown run {key}")
        shape = await self._flow(run["flow_slug"], int(run.get("version", 1)))
        step = next((s for s in shape.get("steps", ()) if s.get("slug") == step_slug), None)
        if step is None:
            raise UnknownStepError(
                f"run {key} (flow {run['flow_slug']!r}) has no step {step_slug!r}")
        if step.get("kind") == "input":
            errors = validate_input(step.get("schema", True), value)
            if errors:
                raise InputRejectedError(
                    step_slug, [{"path": e["path"], "message": e["message"]} for e in errors])
        return await self.store.submit_input(key, step_slug, value)

    async def retry(self, run_id: uuid.UUID | str) -> bool:
        """Runs a failed or cancelled run again: its failed and cancelled steps are queued
        anew (``run:retried``); completed steps keep their outputs. False unless the run had
        failed or was cancelled.

        Raises:
            UnknownRunError: no such run.
        """
        return await self.store.retry_run(_run_uuid(run_id))

    async def _flow(self, flow_slug: str, version: int) -> dict[str, Any]:
        """The shape of the run's version of its flow (a version never changes)."""
        shape = self._flows.get((flow_slug, version))
        if shape is None:
            found = await self.store.get_flow(flow_slug, version)
            if found is None:  # a run's flow cannot be dropped: defensive
                raise UnknownRunError(f"the flow {flow_slug!r} of the run is gone")
            if len(self._flows) >= _MAX_FLOW_SHAPES:
                self._flows.clear()
            shape = self._flows[(flow_slug, version)] = found
        return shape


class RunHandle:
    """One run, as ``Client.start`` or ``Client.run`` gives it: the client's methods, bound to
    ``run_id``."""

    def __init__(self, client: Client, run_id: uuid.UUID) -> None:
        self.client = client
        self.run_id = run_id

    def __repr__(self) -> str:
        return f"RunHandle({str(self.run_id)!r})"

    async def result(self, timeout: float | None = None) -> Any:
        return await self.client.result(self.run_id, timeout=timeout)

    def events(self, since: int = 0) -> AsyncIterator[Event]:
        return self.client.events(self.run_id, since=since)

    async def get(self) -> dict[str, Any] | None:
        return await self.client.get_run(self.run_id)

    async def cancel(self, reason: str | None = None) -> bool:
        return await self.client.cancel(self.run_id, reason)

    async def submit(self, step_slug: str, value: Any) -> bool:
        return await self.client.submit(self.run_id, step_slug, value)

    async def retry(self) -> bool:
        return await self.client.retry(self.run_id)
