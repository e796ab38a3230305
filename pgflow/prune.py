"""Retention: deleting finished runs, a batch per transaction, and ``pgflow prune``.

``pgflow.prune_runs`` deletes one batch of runs that finished before ``now() - older_than`` and
commits; ``prune`` calls it until a batch comes back short, so that no transaction holds many
locks for long (``pgflow prune``, and the worker's ``--retention`` rounds, ``_retention.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
from datetime import timedelta

from pgflow.db.store import MAX_PRUNE_AGE, MAX_PRUNE_BATCH, PRUNE_BATCH, Store
from pgflow.errors import ConfigurationError, DatabaseError

logger = logging.getLogger(__name__)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+)([smhdw])")
_NOT_MIGRATED = ("42883", "3F000")  # undefined function, no schema pgflow


def parse_duration(text: str) -> timedelta:
    """``30s``, ``15m``, ``12h``, ``7d``, ``2w``, or several together (``1d12h``).

    Raises:
        ValueError: anything else, or more than ``MAX_PRUNE_AGE``.
    """
    spelled = text.strip().lower()
    parts = _DURATION.findall(spelled)
    if not spelled or "".join(n + u for n, u in parts) != spelled:
        raise ValueError(f"{text!r} is not a duration such as 30s, 15m, 12h or 7d")
    seconds = sum(int(number) * _UNITS[unit] for number, unit in parts)
    if seconds > MAX_PRUNE_AGE.total_seconds():
        raise ValueError(f"{text!r} is more than {MAX_PRUNE_AGE.days} days")
    return timedelta(seconds=seconds)


def format_duration(age: timedelta) -> str:
    """The shortest spelling ``parse_duration`` reads back (``7d``, ``90m``, ``1d12h``)."""
    seconds = int(age.total_seconds())
    if seconds == 0:
        return "0s"
    parts = []
    for unit in "dhms":
        count, seconds = divmod(seconds, _UNITS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def duration(text: str) -> timedelta:
    """``parse_duration`` as an argparse type."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def prune_batch_size(text: str) -> int:
    """A ``prune_runs`` batch size as an argparse type."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 1 <= value <= MAX_PRUNE_BATCH:
        raise argparse.ArgumentTypeError(f"{value} must be from 1 to {MAX_PRUNE_BATCH}")
    return value


async def prune(
    store: Store,
    older_than: timedelta,
    *,
    batch_size: int = PRUNE_BATCH,
    max_batches: int | None = None,
    call_timeout: float | None = None,
) -> int:
    """Deletes runs finished more than ``older_than`` ago, one ``prune_runs`` call (one
    transaction) per batch, until a batch is short or ``max_batches`` ran; returns how many.
    ``call_timeout``: seconds after which a call is abandoned (TimeoutError; it rolls back).

    A short batch may leave runs that other transactions held locked at that instant: the next
    prune takes them.
    """
    pruned = 0
    batches = 0
    while max_batches is None or batches < max_batches:
        async with asyncio.timeout(call_timeout):
            count = await store.prune_runs(older_than, batch_size)
        pruned += count
        batches += 1
        logger.debug("pruned a batch of %d run(s)", count, extra={"action": "prune_batch"})
        if count < batch_size:
            break
    return pruned


def prune_command(args: argparse.Namespace) -> int:
    """``pgflow prune``: prunes, prints how many runs it deleted.

    It does not migrate (a cron job should not change the schema, and the migrations' advisory
    lock needs a session, which PgBouncer's transaction mode does not keep); without
    ``pgflow.prune_runs`` it says to run ``pgflow migrate``.
    """
    return asyncio.run(_prune(args))


async def _prune(args: argparse.Namespace) -> int:
    from pgflow.db.local_server import database_url

    with database_url(args.database_url, args.data_dir) as url:
        # one statement per transaction, no prepared statement kept: PgBouncer-safe
        store = await Store.open(url, min_size=1, max_size=1, statement_cache=False)
        try:
            pruned = await prune(store, args.older_than, batch_size=args.batch_size)
        except DatabaseError as exc:
            if exc.sqlstate in _NOT_MIGRATED:
                raise ConfigurationError(
                    "the database has no pgflow.prune_runs: run `pgflow migrate` first"
                ) from exc
            raise
        finally:
            await store.close()
    print(f"pruned {pruned} run(s) finished more than {format_duration(args.older_than)} ago")
    return 0
