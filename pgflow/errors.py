"""PGFlow's exceptions, one tree, translated at the boundaries.

    PGFlowError
    ├── InvalidFlowError        define_flow refused a shape (SQLSTATE PF400)
    ├── FlowShapeConflictError  another shape already uses the slug (PF409)
    ├── UnknownFlowError        run_flow on a flow that was never defined (PF404)
    ├── UnknownRunError         no run with that id
    ├── DatabaseUnavailableError  the server cannot be reached, or the link to it was lost
    ├── DatabaseError           the database refused a statement (its SQLSTATE in .sqlstate)
    │   ├── ValueRejectedError      it cannot store a value it was given (SQLSTATE class 22)
    │   └── TransientDatabaseError  a serialization failure or deadlock: retry (class 40)
    ├── ConfigurationError      a bad option or environment (CLI, flows module)
    └── RequestError            the gateway refused a client's request (gateway/errors.py)

``pgflow/db/translation.py`` maps asyncpg's exceptions and SQLSTATEs to these, once: nothing above
the database layer sees an asyncpg exception; the gateway maps them to the error codes and statuses
of its HTTP and websocket reference.
"""

from __future__ import annotations


class PGFlowError(Exception):
    """PGFlow failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class InvalidFlowError(PGFlowError):
    """The flow definition is invalid."""


class FlowShapeConflictError(PGFlowError):
    """A flow with this slug already exists with a different shape."""


class UnknownFlowError(PGFlowError):
    """No flow with this slug."""


class UnknownRunError(PGFlowError):
    """No run with this id."""


class DatabaseUnavailableError(PGFlowError):
    """The database cannot be reached."""


class DatabaseError(PGFlowError):
    """The database refused the statement."""

    def __init__(self, message: str | None = None, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class ValueRejectedError(DatabaseError):
    """The database cannot store a value it was given."""


class TransientDatabaseError(DatabaseError):
    """The transaction failed for a reason that retrying can cure."""


class ConfigurationError(PGFlowError):
    """The configuration is invalid."""


class StreamError(PGFlowError):
    """A chunk a step cannot stream (``StepContext.emit``): not JSON, too large, or emitted
    after its attempt ended."""


class StreamBufferFullError(StreamError):
    """``emit`` from an async handler while its attempt's buffer is full: ``await
    context.emit_async(value)`` waits for room instead."""
