"""asyncpg's exceptions translated into PGFlow's errors: the one place that reads a SQLSTATE.

    PF400 / PF404 / PF409       InvalidFlowError / UnknownFlowError / FlowShapeConflictError
                                 (PF404 for a run or a step: UnknownRunError / UnknownStepError)
    PF422                        IdempotencyConflictError
    a lost or refused link       DatabaseUnavailableError
    SQLSTATE class 22            ValueRejectedError (also asyncpg's client-side DataError: an
                                 argument it cannot encode is the value's fault too)
    SQLSTATE class 40            TransientDatabaseError (serialization failure, deadlock)
    any other SQLSTATE           DatabaseError

Every call into asyncpg that can fail runs under ``translate_errors()``; what comes out of
``pgflow/db/`` is a ``PGFlowError`` (or a cancellation, or a bug of ours).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import asyncpg

from pgflow.errors import (
    DatabaseError,
    DatabaseUnavailableError,
    FlowShapeConflictError,
    IdempotencyConflictError,
    InvalidFlowError,
    PGFlowError,
    TransientDatabaseError,
    UnknownFlowError,
    UnknownRunError,
    UnknownStepError,
    ValueRejectedError,
)

# Exceptions that mean "the server went away", as opposed to "the query was wrong".
LOST_CONNECTION: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    # A connection the server cut mid-protocol (a restart) can be left in a state where the
    # next query fails before it is sent: "cannot switch to state 12; another operation (2) is
    # in progress". Nothing ran; the caller may retry, as for any lost connection.
    asyncpg.exceptions.InternalClientError,
    TimeoutError,
)

_ENGINE_ERRORS: dict[str, type[PGFlowError]] = {
    "PF400": InvalidFlowError,
    "PF404": UnknownFlowError,
    "PF409": FlowShapeConflictError,
    "PF422": IdempotencyConflictError,
}
# PF404 names what is unknown in its message's words (sql/schema: cancel_run, submit_input, ...)
_UNKNOWN_BY_MESSAGE: tuple[tuple[re.Pattern[str], type[PGFlowError]], ...] = (
    (re.compile(r"^unknown run "), UnknownRunError),
    (re.compile(r"^run \S+ has no step "), UnknownStepError),
)
_SQLSTATE_CLASSES: dict[str, type[DatabaseError]] = {
    "22": ValueRejectedError,
    "40": TransientDatabaseError,
}


def translate(exc: BaseException) -> PGFlowError | None:
    """PGFlow's error for an exception raised by asyncpg or its socket; None for any other."""
    if isinstance(exc, PGFlowError):
        return None
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate: str = getattr(exc, "sqlstate", None) or ""
        message = getattr(exc, "message", None) or str(exc)
        engine_error = _ENGINE_ERRORS.get(sqlstate)
        if sqlstate == "PF404":
            engine_error = next((error for pattern, error in _UNKNOWN_BY_MESSAGE
                                 if pattern.match(message)), engine_error)
        if engine_error is not None:
            return engine_error(message)
        if isinstance(exc, LOST_CONNECTION):
            return DatabaseUnavailableError(str(exc) or type(exc).__name__)
        return _SQLSTATE_CLASSES.get(sqlstate[:2], DatabaseError)(message, sqlstate=sqlstate)
    if isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError):
        # asyncpg's client-side DataError: it could not encode an argument. Otherwise an
        # InterfaceError counts as a lost connection; this one is the value's fault.
        return ValueRejectedError(str(exc))
    if isinstance(exc, LOST_CONNECTION):
        return DatabaseUnavailableError(str(exc) or type(exc).__name__)
    return None


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Raises PGFlow's error for whatever asyncpg raises in the block (``raise X from exc``)."""
    try:
        yield
    except Exception as exc:
        error = translate(exc)
        if error is None:
            raise
        raise error from exc
