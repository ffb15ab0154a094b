"""The ``qkms:v1`` ciphertext token: ``qkms:v1:<key_id>:<base64url body>``; the version and
the caller's context are bound into the AEAD as associated data."""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any

from qkms.errors import (
    InvalidInputError,
)

from .results import OperationResult

log = logging.getLogger("key-management:service")


TOKEN_PREFIX = "qkms:v1:"  # noqa: S105 - a format marker, not a credential


def make_token(key_id: str, body: bytes) -> str:
    return TOKEN_PREFIX + key_id + ":" + base64.urlsafe_b64encode(body).rstrip(b"=").decode()


def parse_token(token: Any) -> tuple[str, bytes]:
    """Split an ENCRYPT token into (key ID, body); refuse anything malformed."""
    if isinstance(token, OperationResult):
        token = token.ciphertext
    text = token.decode("ascii", "replace") if isinstance(token, bytes) else str(token)
    if not text.startswith(TOKEN_PREFIX) or text.count(":") != 3:
        raise InvalidInputError("data", "not a qkms ciphertext token (qkms:v1:<key_id>:<data>)")
    key_id, body = text[len(TOKEN_PREFIX):].split(":")
    try:
        return key_id, base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise InvalidInputError("data", "ciphertext token is not valid base64url") from None


def token_aad(key_id: str, context: bytes) -> bytes:
    """Bind the version and the caller's context into the AEAD."""
    return TOKEN_PREFIX.encode() + key_id.encode() + b"\x00" + context
