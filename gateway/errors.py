"""PGFlow's exceptions, one tree, translated at the boundaries.

    PGFlowError
    ├── InvalidFlowError        define_flow refused a shape (SQLSTATE PF400)
    ├── FlowShapeConflictError  another shape already uses the slug (PF409)
    ├── UnknownFlowError        run_flow on a flow that was never defined (PF404)
    ├── UnknownRunError         no run with that id
    ├── DatabaseUnavailableError  the server cannot be reached
    ├── ConfigurationError      a bad option or environment (CLI, flows module)
    └── RequestError            the gateway refused a client's request (has .code, .status)
        ├── BadJsonError            bad_json 400: a body or frame that is not JSON
        ├── BadRequestError         bad_request 400: JSON of the wrong shape, a binary frame
        ├── UnauthorizedError       unauthorized 401: token missing, malformed, expired, ...
        ├── ForbiddenError          forbidden 403: a valid token that may not do this; Origin
        ├── TooLargeError           too_large 413: body or frame over the limit
        ├── TooManySubscriptionsError  too_many_subscriptions 429
        └── TooManyConnectionsError    too_many_connections 429

``store.py`` maps SQLSTATEs to these; the HTTP and websocket layers map these to the error codes
and statuses of docs/protocol.md.
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


class ConfigurationError(PGFlowError):
    """The configuration is invalid."""


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
