"""How errors become HTTP answers: a stable code, the seed's message, the right status.

| Status | Meaning |
|---|---|
| 400 | bad input, naming the field (also a tampered ciphertext) |
| 401 | no token or a bad token |
| 403 | not allowed by RBAC, or another environment |
| 404 | ``Key not found: <id>`` |
| 409 | revoked, retired, or outside its grace period |
| 413 / 415 | body too large / not JSON |
| 422 | operation not allowed for the key's usage |
| 503 | ``KMS provider unavailable``, audit storage failed (fail-closed), store unreadable |
"""

from __future__ import annotations

from qkms.errors import (
    AuditStorageError,
    EnvironmentMismatchError,
    Forbidden,
    IntegrityError,
    InvalidInputError,
    KeyNotFoundError,
    KeyStateError,
    OperationNotAllowedError,
    ProviderUnavailableError,
    QkmsError,
    RecordCorruptError,
    Unauthenticated,
)


class UnsupportedMedia(QkmsError):
    code = "unsupported_media_type"


class TooLarge(QkmsError):
    code = "too_large"


STATUS: list[tuple[type[QkmsError], int]] = [
    (UnsupportedMedia, 415),
    (TooLarge, 413),
    (Unauthenticated, 401),
    (Forbidden, 403),
    (EnvironmentMismatchError, 403),
    (KeyNotFoundError, 404),
    (KeyStateError, 409),
    (OperationNotAllowedError, 422),
    (RecordCorruptError, 503),
    (ProviderUnavailableError, 503),
    (AuditStorageError, 503),
    (InvalidInputError, 400),
    (IntegrityError, 400),
]


def status_of(exc: QkmsError) -> int:
    return next((status for kind, status in STATUS if isinstance(exc, kind)), 503)


def error_body(exc: QkmsError, request_id: str | None = None) -> dict:
    error = {"code": exc.code, "message": exc.message}
    if exc.field:
        error["field"] = exc.field
    body: dict = {"error": error}
    if request_id:
        body["request_id"] = request_id
    return body
