"""A step's ``logging`` records, streamed into its run's log as chunks (opt-in: ``Flow(...,
stream_logs=True)`` or ``pgflow worker --stream-logs``).

While such a step's handler runs, its attempt's stream is the context's ``current_stream``
(the handler's task; a plain handler's thread gets a copy of that context). One handler on the
root logger forwards each record that reaches it (its logger's level passed) to the stream of
the attempt that logged it, as ``{"level", "logger", "message"}``: a page shows a step's logs
live. Records of PGFlow's own loggers are not forwarded, and a record is never worth failing or
blocking a step: one that cannot be streamed (a full buffer on the event loop) is dropped.
"""

from __future__ import annotations

import contextvars
import logging

from pgflow.flows import ChunkSink

current_stream: contextvars.ContextVar[ChunkSink | None] = contextvars.ContextVar(
    "pgflow_current_stream", default=None)


class StepLogHandler(logging.Handler):
    """Forwards records to the current attempt's stream."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        stream = current_stream.get()
        if stream is None or record.name == "pgflow" or record.name.startswith("pgflow."):
            return
        try:
            stream.emit({"level": record.levelname, "logger": record.name,
                         "message": self.format(record)})
        except Exception:  # a full buffer, a closed stream, an unprintable message
            self.dropped += 1


_handler = StepLogHandler()
_users = 0


def install() -> None:
    """Adds the handler to the root logger (once for every worker of the process)."""
    global _users
    if _users == 0:
        logging.getLogger().addHandler(_handler)
    _users += 1


def uninstall() -> None:
    global _users
    _users -= 1
    if _users == 0:
        logging.getLogger().removeHandler(_handler)
