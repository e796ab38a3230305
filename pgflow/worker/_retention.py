"""The worker's retention (``--retention``): a round of pruning every ``interval`` seconds.

A round is a few ``prune_runs`` calls, each its own short transaction that skips runs others
hold locked, so it never blocks the claim loop or the reports; rounds never overlap (one loop);
a round stops after ``max_batches`` calls, so a large backlog of old runs is worked off over
several rounds, ``BACKLOG_PAUSE`` apart, instead of one taking a connection for minutes.
Several workers with retention on prune side by side: each batch skips the runs another is
deleting.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from pgflow.db.store import PRUNE_BATCH, Store
from pgflow.prune import format_duration, prune
from pgflow.worker._retry import DB_CALL_TIMEOUT, Retry

logger = logging.getLogger(__name__)

RETENTION_MAX_BATCHES = 10  # prune_runs calls per round: at most 10,000 runs of 1,000
BACKLOG_PAUSE = 0.5  # seconds before the next round when a round stopped at its bound


async def retention(
    store: Store,
    older_than: timedelta,
    interval: float,
    *,
    batch_size: int = PRUNE_BATCH,
    max_batches: int = RETENTION_MAX_BATCHES,
) -> None:
    """Prunes runs finished more than ``older_than`` ago, a round now and then one every
    ``interval`` seconds (sooner while a backlog lasts), until cancelled. A failed round is
    logged (``Retry``: an outage does not fill the log) and the next round tries again."""
    retry = Retry("pruning finished runs")
    age = format_duration(older_than)
    while True:
        pause = interval
        try:
            # a round's calls each have their own timeout: a stuck call is abandoned
            pruned = await prune(store, older_than, batch_size=batch_size,
                                 max_batches=max_batches, call_timeout=DB_CALL_TIMEOUT)
        except Exception as exc:
            retry.failed(exc)
        else:
            retry.succeeded()
            if pruned:
                logger.info("pruned %d run(s) finished more than %s ago", pruned, age,
                            extra={"action": "retention", "count": pruned})
            if pruned >= batch_size * max_batches:  # stopped at its bound: more are waiting
                pause = min(interval, BACKLOG_PAUSE)
        await asyncio.sleep(pause)
