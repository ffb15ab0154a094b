"""What callers may send, checked once at the front: names, key IDs, enums given as
strings, bytes given as str, contexts given as dicts; and the limits on what is audited."""

from __future__ import annotations

import json
import logging
import re
from typing import Any, TypeVar

from qkms.errors import (
    InvalidInputError,
)

log = logging.getLogger("key-management:service")


KEY_ID_RE = re.compile(r"^key_(?P<env>[a-z]+)_(?P<id>[0-9a-f]{16,64})$")
_LABEL = r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?"
NAME_RE = re.compile(rf"^{_LABEL}(/{_LABEL})?$")
AUDIT_KEY = "qkms-system/audit-checkpoint"
SYSTEM_LABEL = "qkms.io/system"
MAX_DERIVE_LENGTH = 255 * 32
MAX_AUDITED_NAME = 320  # what a refusal records of a name or reason, whatever was sent
MAX_AUDITED_REASON = 512
E = TypeVar("E")


def _enum(kind: type[E], value: Any, field_name: str) -> E:
    try:
        return kind(str(value).strip().upper())  # type: ignore[call-arg]
    except ValueError:
        allowed = ", ".join(m.value for m in kind)  # type: ignore[attr-defined]
        raise InvalidInputError(field_name, f"{value!r} is not one of {allowed}") from None


def _bytes(value: Any, field_name: str) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    raise InvalidInputError(field_name, f"must be bytes or str, not {type(value).__name__}")


def _context(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    return _bytes(value, "context")
