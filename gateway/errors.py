"""The gateway's refusals of a client's request: each has the ``code`` and HTTP ``status`` that
the HTTP and websocket reference document.

    PGFlowError (pgflow/errors.py)
    └── RequestError            the gateway refused a client's request
        ├── BadJsonError            bad_json 400: a body or frame that is not JSON
        ├── BadRequestError         bad_request 400: JSON of the wrong shape, a binary frame
        ├── UnauthorizedError       unauthorized 401: token missing, malformed, expired, ...
        ├── ForbiddenError          forbidden 403: a valid token that may not do this; Origin
        ├── ConflictError           conflict 409: the run or step is not in a state for that
        ├── TooLargeError           too_large 413: body or frame over the limit
        ├── TooManySubscriptionsError  too_many_subscriptions 429
        └── TooManyConnectionsError    too_many_connections 429

Errors of PGFlow's own that a client causes have codes too (``wire.error_status``): unknown flow,
run or step (not_found 404), ``InputRejectedError`` (invalid_input 400, with its ``errors``),
``IdempotencyConflictError`` (idempotency_conflict 422), ...
"""

from __future__ import annotations

from pgflow.errors import PGFlowError


class RequestError(PGFlowError):
    """The request was refused."""

    code = "bad_request"
    status = 400

    def __init__(self, message: str | None = None, *, run_id: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id


class BadJsonError(RequestError):
    """The body is not valid JSON."""

    code = "bad_json"
    status = 400


class BadRequestError(RequestError):
    """The request has the wrong shape."""

    code = "bad_request"
    status = 400


class ConflictError(RequestError):
    """The run or step is not in a state that allows this (already ended, not waiting)."""

    code = "conflict"
    status = 409


class UnauthorizedError(RequestError):
    """A valid token is required."""

    code = "unauthorized"
    status = 401


class ForbiddenError(RequestError):
    """This token may not do that."""

    code = "forbidden"
    status = 403


class TooLargeError(RequestError):
    """The request is too large."""

    code = "too_large"
    status = 413


class TooManySubscriptionsError(RequestError):
    """This socket has too many subscriptions."""

    code = "too_many_subscriptions"
    status = 429


class TooManyConnectionsError(RequestError):
    """The gateway has too many open sockets."""

    code = "too_many_connections"
    status = 429
