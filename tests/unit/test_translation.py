"""asyncpg's exceptions become PGFlow's errors at the database boundary (pgflow/db/translation.py),
driven with exceptions built as asyncpg builds them from a server's message: no database."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from asyncpg.exceptions import _base

from pgflow.db.translation import translate, translate_errors
from pgflow.errors import (
    DatabaseError,
    DatabaseUnavailableError,
    FlowShapeConflictError,
    InvalidFlowError,
    PGFlowError,
    TransientDatabaseError,
    UnknownFlowError,
    ValueRejectedError,
)


def server_error(sqlstate: str, message: str = "the server's message") -> Any:
    return asyncpg.PostgresError.new({"C": sqlstate, "M": message, "S": "ERROR"})


@pytest.mark.parametrize(("sqlstate", "expected"), [
    ("PF400", InvalidFlowError),
    ("PF404", UnknownFlowError),
    ("PF409", FlowShapeConflictError),
    ("22P05", ValueRejectedError),  # untranslatable character
    ("22003", ValueRejectedError),  # numeric value out of range
    ("40001", TransientDatabaseError),  # serialization failure
    ("40P01", TransientDatabaseError),  # deadlock
    ("42501", DatabaseError),  # insufficient privilege
    ("P0001", DatabaseError),
])
def test_a_sqlstate_becomes_its_pgflow_error_with_the_servers_message(
    sqlstate: str, expected: type[PGFlowError]
) -> None:
    error = translate(server_error(sqlstate))
    assert type(error) is expected
    assert str(error) == "the server's message"


def test_a_refusal_keeps_its_sqlstate() -> None:
    error = translate(server_error("22P05"))
    assert isinstance(error, DatabaseError)
    assert error.sqlstate == "22P05"


@pytest.mark.parametrize("exc", [
    ConnectionRefusedError(111, "Connection refused"),
    TimeoutError(),
    asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle"),
    asyncpg.exceptions.AdminShutdownError("terminating connection"),
    asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
    asyncpg.exceptions.TooManyConnectionsError("too many clients"),
    _base.InternalClientError("cannot switch to state 12; another operation is in progress"),
    asyncpg.InterfaceError("connection is closed"),
])
def test_a_lost_link_is_unavailable(exc: BaseException) -> None:
    assert isinstance(translate(exc), DatabaseUnavailableError)


def test_an_argument_asyncpg_cannot_encode_is_a_rejected_value_not_a_lost_link() -> None:
    # asyncpg's client-side DataError is an InterfaceError, which otherwise means a lost link.
    error = translate(_base.DataError("invalid input for query argument $2: 'x' (not a uuid)"))
    assert type(error) is ValueRejectedError
    assert "query argument $2" in str(error)


@pytest.mark.parametrize("exc", [
    KeyError("a bug"), RuntimeError("another"), UnknownFlowError("already ours"),
])
def test_anything_else_is_left_alone(exc: BaseException) -> None:
    assert translate(exc) is None


def test_translate_errors_raises_the_pgflow_error_from_the_original() -> None:
    original = server_error("40001", "could not serialize access")
    with pytest.raises(TransientDatabaseError) as raised, translate_errors():
        raise original
    assert raised.value.__cause__ is original


def test_translate_errors_lets_a_bug_through_unchanged() -> None:
    with pytest.raises(KeyError), translate_errors():
        raise KeyError("a bug")
