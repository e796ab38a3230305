"""The worker's heartbeat: one ``extend_leases`` call for every running handler, every third
of a lease, so that a handler longer than its lease keeps its task."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence

from pgflow.db.store import Store
from pgflow.worker._retry import DB_CALL_TIMEOUT, Retry

logger = logging.getLogger(__name__)


async def heartbeat(
    store: Store,
    worker_id: str,
    lease_seconds: float,
    held: Callable[[], Sequence[tuple[uuid.UUID, str]]],
) -> None:
    """Extends the leases ``held()`` names until cancelled; a failed round is logged and the
    next one tries again (a lease outlives two missed rounds)."""
    retry = Retry("extending leases")
    interval = lease_seconds / 3
    while True:
        await asyncio.sleep(interval)
        tasks = held()
        if not tasks:
            continue
        try:
            async with asyncio.timeout(min(DB_CALL_TIMEOUT, lease_seconds)):
                kept = await store.extend_leases(worker_id, tasks, lease_seconds)
        except Exception as exc:
            retry.failed(exc)
            continue
        retry.succeeded()
        if kept < len(tasks):
            # Also counts results reported during the call: no warning for that.
            logger.debug("extended %d of %d leases", kept, len(tasks),
                         extra={"action": "lease_extend"})
