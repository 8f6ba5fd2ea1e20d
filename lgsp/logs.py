"""Structured JSON logs, with personal IDs masked wherever they might slip in."""
from __future__ import annotations

import datetime as dt
import logging
import re
import sys

import orjson

# Runs of 9 or 12 digits look like personal IDs or old ID card numbers.
_ID_LIKE = re.compile(r"(?<!\d)(\d{9}|\d{12})(?!\d)")


def mask(text: str) -> str:
    return _ID_LIKE.sub(lambda m: m.group(0)[:3] + "*" * (len(m.group(0)) - 3), text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return mask(orjson.dumps(entry, default=str).decode())


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Access logs would print paths, and paths carry personal IDs: the exchange log replaces them.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
