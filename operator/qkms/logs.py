"""Logging: JSON lines for the operator and server, short lines for the CLI.

``DEBUG=key-management:*`` (the seed's switch) turns on debug output for
every qkms logger; ``DEBUG=key-management:service`` for one.  Loggers are
named ``key-management:<part>`` so the switch maps onto them directly.
"""

from __future__ import annotations

import json
import logging
import os
import re
from datetime import UTC, datetime

ROOT = "key-management"
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]")


def escape(text: object, limit: int = 0) -> str:
    """Text safe for one log line: control characters (CR, LF, ESC, ...) become escapes, so a
    request-derived value can never start a forged line; ``limit`` bounds its length."""
    value = str(text)
    if limit and len(value) > limit:
        value = value[:limit] + f"...({len(value) - limit} more)"
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), value)


class LineFormatter(logging.Formatter):
    """Short lines whose message has every control character escaped (one record, one line)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        return super().formatMessage(_escaped(record))


def _escaped(record: logging.LogRecord) -> logging.LogRecord:
    copy = logging.makeLogRecord(record.__dict__)
    copy.message = escape(record.message)
    return copy


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(),
                "level": record.levelname.lower(), "logger": record.name,
                "message": record.getMessage()}
        for key in ("request_id", "key_id", "operation"):
            if hasattr(record, key):
                data[key] = getattr(record, key)
        if record.exc_info and record.exc_info[0] is not None:
            data["error"] = record.exc_info[0].__name__
        return json.dumps(data)


def debug_patterns(value: str | None) -> list[str]:
    return [p.strip() for p in (value or "").split(",") if p.strip().startswith(ROOT)]


class DebugFilter(logging.Filter):
    """Pass debug records only from loggers the DEBUG switch names."""

    def __init__(self, prefixes: list[str]) -> None:
        super().__init__()
        self.prefixes = tuple(prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG or record.name.startswith(self.prefixes)


def configure(json_lines: bool = False, debug: str | None = None) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_lines
                         else LineFormatter("qkms: %(levelname)s: %(message)s"))
    # DEBUG (``DEBUG=key-management:*``) is the debug-module convention's variable, not a
    # QKMS_ one, and logs sits below config in the layers: it stays read here.
    prefixes = [p.rstrip("*") for p in debug_patterns(
        debug if debug is not None else os.environ.get("DEBUG"))]
    handler.addFilter(DebugFilter(prefixes))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if prefixes else logging.INFO)
    for noisy in ("asyncio", "urllib3", "kubernetes", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
