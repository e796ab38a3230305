"""PGFlow's exceptions, one tree, translated at the boundaries.

    PGFlowError
    ├── InvalidFlowError        define_flow refused a shape (SQLSTATE PF400)
    ├── FlowShapeConflictError  PF409: no longer raised (a changed shape is a new version)
    ├── UnknownFlowError        run_flow on a flow that was never defined (PF404)
    ├── UnknownRunError         no run with that id (PF404)
    ├── UnknownStepError        the run has no step with that slug (PF404)
    ├── IdempotencyConflictError  the key already started a run with another input (PF422)
    ├── InputRejectedError      a value submitted to an input step fails its schema (.errors)
    ├── FlowFailedError         a run the Python client awaited failed (.run_id, .step_slug, .error)
    ├── FlowCancelledError      a run the Python client awaited was cancelled (.run_id, .reason)
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
    """A flow with this slug already exists with a different shape. (Kept for callers that
    catch it: define_flow now records a changed shape as the flow's next version.)"""


class UnknownFlowError(PGFlowError):
    """No flow with this slug."""


class UnknownRunError(PGFlowError):
    """No run with this id."""


class UnknownStepError(PGFlowError):
    """The run has no step with this slug."""


class IdempotencyConflictError(PGFlowError):
    """The idempotency key already started a run of this flow with another input."""


class InputRejectedError(PGFlowError):
    """The value does not match the input step's JSON Schema: ``errors`` lists each problem as
    ``{"path": <JSON pointer into the value>, "message": str}``."""

    def __init__(self, step_slug: str, errors: list[dict[str, str]]) -> None:
        first = errors[0] if errors else {"path": "", "message": "rejected"}
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"the value for step {step_slug!r} does not match its schema: "
                         f"{first['path'] or '/'}: {first['message']}{more}")
        self.step_slug = step_slug
        self.errors = errors


class FlowFailedError(PGFlowError):
    """The run failed (``run:failed``): ``step_slug`` is the step whose last attempt failed,
    ``error`` that attempt's error."""

    def __init__(self, run_id: str, error: str | None, step_slug: str | None = None) -> None:
        at = f" at step {step_slug!r}" if step_slug is not None else ""
        super().__init__(f"run {run_id} failed{at}: {error}")
        self.run_id = run_id
        self.error = error
        self.step_slug = step_slug


class FlowCancelledError(PGFlowError):
    """The run was cancelled (``run:cancelled``), with the ``reason`` given to ``cancel_run``
    (or None)."""

    def __init__(self, run_id: str, reason: str | None = None) -> None:
        super().__init__(f"run {run_id} was cancelled" + (f": {reason}" if reason else ""))
        self.run_id = run_id
        self.reason = reason


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
