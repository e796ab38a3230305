"""A worker's options: their defaults and the bounds ``Worker()`` checks them against."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from pgflow.db.store import MAX_LEASE, MAX_PRUNE_AGE, MIN_LEASE
from pgflow.errors import ConfigurationError
from pgflow.flows import Flow

DEFAULT_CONCURRENCY = 10
DEFAULT_LEASE = 30.0  # seconds
DEFAULT_POLL_INTERVAL = 1.0  # seconds
DEFAULT_SHUTDOWN_GRACE = 30.0  # seconds
DEFAULT_RETENTION_INTERVAL = 300.0  # seconds between retention rounds


def http_step_options(
    http_secret: str | None,
    http_concurrency: int | None = None,
    http_base_url: str | None = None,
    callback_url: str | None = None,
) -> dict[str, Any]:
    """The HTTP-step keyword arguments of ``Worker`` the command line gave: ``http_secret``,
    ``http_concurrency``, ``http_base_url``, ``callback_url``; none without a secret (HTTP
    steps off), and only those given (the rest keep the Worker's defaults)."""
    if not http_secret:
        return {}
    given = {"http_secret": http_secret, "http_concurrency": http_concurrency,
             "http_base_url": http_base_url, "callback_url": callback_url}
    return {name: value for name, value in given.items() if value is not None}


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def check_options(
    flows: Sequence[Flow],
    *,
    concurrency: int,
    batch_size: int | None,
    lease_seconds: float,
    poll_interval: float,
    shutdown_grace: float,
    max_stuck_threads: int | None,
    retention: timedelta | None = None,
    retention_interval: float = DEFAULT_RETENTION_INTERVAL,
) -> None:
    """Raises ConfigurationError naming the first option out of its bounds."""
    if not flows:
        raise ConfigurationError("a worker needs at least one flow")
    if len({f.slug for f in flows}) != len(flows):
        raise ConfigurationError("two of the worker's flows share a slug")
    if not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigurationError(f"concurrency must be at least 1, not {concurrency!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigurationError(f"batch size must be at least 1, not {batch_size!r}")
    if not MIN_LEASE <= lease_seconds <= MAX_LEASE:
        raise ConfigurationError(f"the lease must be from {MIN_LEASE:g} to {MAX_LEASE:g} "
                                 f"seconds, not {lease_seconds!r}")
    if not poll_interval > 0:
        raise ConfigurationError(
            f"the poll interval must be positive seconds, not {poll_interval!r}"
        )
    if not shutdown_grace >= 0:
        raise ConfigurationError(
            f"the shutdown grace must be seconds >= 0, not {shutdown_grace!r}"
        )
    if max_stuck_threads is not None and (
        not isinstance(max_stuck_threads, int) or max_stuck_threads < 1
    ):
        raise ConfigurationError(
            f"max stuck threads must be at least 1, not {max_stuck_threads!r}"
        )
    if retention is not None and (
        not isinstance(retention, timedelta) or not timedelta(0) <= retention <= MAX_PRUNE_AGE
    ):
        raise ConfigurationError(
            f"retention must be a timedelta from 0 to {MAX_PRUNE_AGE.days} days, not {retention!r}"
        )
    if not retention_interval > 0:
        raise ConfigurationError(
            f"the retention interval must be positive seconds, not {retention_interval!r}"
        )
