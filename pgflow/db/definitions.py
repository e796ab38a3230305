"""Defining flows in the database: each flow's shape goes through ``define_flow``, which
records it or checks that it has not changed. The worker and the gateway both do it at start.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

from pgflow.db.store import Store
from pgflow.errors import FlowShapeConflictError

logger = logging.getLogger(__name__)


class Definable(Protocol):
    """What ``sync_flows`` needs of a flow (``pgflow.Flow``)."""

    @property
    def slug(self) -> str: ...

    def definition(self) -> dict[str, Any]: ...


async def sync_flows(store: Store, flows: Sequence[Definable]) -> None:
    """Defines each flow's shape in the database, or checks that it has not changed.

    Raises:
        FlowShapeConflictError: a slug already exists with another shape; the message says
            what differs and to give the new shape a new slug (``name_v2``).
        InvalidFlowError: the database refused a shape.
    """
    for flow in flows:
        try:
            await store.define_flow(flow.definition())
        except FlowShapeConflictError as exc:
            message = str(exc)
            if "new slug" not in message:
                message += f"; give the new shape a new slug, e.g. '{flow.slug}_v2'"
            raise FlowShapeConflictError(message) from exc
        logger.debug("flow %s defined", flow.slug, extra={"action": "flow_sync"})
