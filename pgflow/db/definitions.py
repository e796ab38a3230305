"""Defining flows in the database: each flow's shape goes through ``define_flow``, which finds
the version of the flow that has this shape, or records it as the flow's next version. The
worker and the gateway both do it at start; the worker then serves exactly the versions its
code has (``flow_key``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

from pgflow.db.store import Store

logger = logging.getLogger(__name__)


class Definable(Protocol):
    """What ``sync_flows`` needs of a flow (``pgflow.Flow``)."""

    @property
    def slug(self) -> str: ...

    def definition(self) -> dict[str, Any]: ...


def flow_key(slug: str, version: int) -> str:
    """The key a flow's version goes by in the engine (sql/schema/0030_table_flows.sql): what
    its steps' tasks carry, what ``claim_tasks`` and ``pgflow_tasks`` name."""
    return slug if version == 1 else f"{slug}@{version}"


async def sync_flows(store: Store, flows: Sequence[Definable]) -> dict[str, int]:
    """Defines each flow's shape in the database; returns the version each flow's code is.

    Says so when the code is not the newest version (new runs start on a version these flows
    cannot run), and when it made a new version (runs still going on older ones need a process
    with that code to finish).

    Raises:
        InvalidFlowError: the database refused a shape.
    """
    versions: dict[str, int] = {}
    for flow in flows:
        before = await store.get_flow(flow.slug)
        shape = await store.define_flow(flow.definition())
        version = versions[flow.slug] = int(shape.get("version", 1))
        newest = int(before.get("version", 1)) if before is not None else version
        if version < newest:
            logger.warning(
                "flow %s: this code is its version %d, but version %d is the newest: new runs "
                "start on version %d, which this process does not run; it runs version %d's",
                flow.slug, version, newest, newest, version,
                extra={"action": "flow_version_old", "flow": flow.slug, "version": version,
                       "newest": newest})
        elif version > newest:
            logger.info(
                "flow %s: its shape changed: it is now version %d, which new runs start on; "
                "runs of version %d or before finish on theirs, run by a process with that code",
                flow.slug, version, newest,
                extra={"action": "flow_version_new", "flow": flow.slug, "version": version})
        logger.debug("flow %s is version %d", flow.slug, version,
                     extra={"action": "flow_sync", "version": version})
    return versions
