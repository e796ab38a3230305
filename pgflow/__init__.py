"""PGFlow: DAG workflows whose whole state lives in PostgreSQL, shown live in the browser."""

from __future__ import annotations

from pgflow.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    FlowShapeConflictError,
    InvalidFlowError,
    PGFlowError,
    StreamBufferFullError,
    StreamError,
    UnknownFlowError,
    UnknownRunError,
)
from pgflow.flows import Flow, StepContext

__all__ = [
    "ConfigurationError",
    "DatabaseUnavailableError",
    "Flow",
    "FlowShapeConflictError",
    "InvalidFlowError",
    "PGFlowError",
    "StepContext",
    "StreamBufferFullError",
    "StreamError",
    "UnknownFlowError",
    "UnknownRunError",
]
__version__ = "0.1.0"
