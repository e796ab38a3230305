"""Log formats of the CLI: JSON lines, and a filter that keeps an outage's log readable."""

from __future__ import annotations

import logging

import orjson

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the record's ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        return orjson.dumps(data, default=str).decode()


class OutageWithoutTraceback(logging.Filter):
    """asyncpg's pool logs every failed attempt to reconnect its floor with a traceback; while the
    database is away that is a screenful per attempt and says nothing more than one line would.
    Folds the exception into the message (levels and everything else are kept)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}"
            record.args = None
            record.exc_info = None
        return True
