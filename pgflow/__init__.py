"""PGFlow: DAG workflows whose whole state lives in PostgreSQL, shown live in the browser."""

from __future__ import annotations

from pgflow.client import Client
from pgflow.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    FlowCancelledError,
    FlowFailedError,
    FlowShapeConflictError,
    IdempotencyConflictError,
    InputRejectedError,
    InvalidFlowError,
    PGFlowError,
    StreamBufferFullError,
    StreamError,
    UnknownFlowError,
    UnknownRunError,
    UnknownStepError,
)
from pgflow.flows import Flow, StepContext

__all__ = [
    "Client",
    "ConfigurationError",
    "DatabaseUnavailableError",
    "Flow",
    "FlowCancelledError",
    "FlowFailedError",
    "FlowShapeConflictError",
    "IdempotencyConflictError",
    "InputRejectedError",
    "InvalidFlowError",
    "PGFlowError",
    "StepContext",
    "StreamBufferFullError",
    "StreamError",
    "UnknownFlowError",
    "UnknownRunError",
    "UnknownStepError",
]
__version__ = "0.1.0"
