"""Errors qkms raises, with the messages users search for.

Every error has a stable ``code`` (the data-plane API returns it) and, for bad
input, the ``field`` at fault.  Messages never contain key material: callers
build them from names, IDs and reasons only.  This module imports nothing of
qkms, so every layer may raise these.
"""

from __future__ import annotations


class QkmsError(Exception):
    """Base of every error qkms raises on purpose."""

    code = "internal"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInputError(QkmsError, ValueError):
    """Bad input: the message names the field and the reason."""

    code = "invalid_input"

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}", field=field)
        self.reason = reason


class UnsupportedAlgorithmError(InvalidInputError):
    code = "unsupported_algorithm"


class InvalidDurationError(InvalidInputError):
    code = "invalid_duration"


class PQCDisabledError(InvalidInputError):
    code = "pqc_disabled"


class OperationNotAllowedError(QkmsError):
    """The operation does not fit the key's usage or algorithm."""

    code = "operation_not_allowed"


class Unauthenticated(QkmsError):
    """No credentials, or credentials that do not identify anyone (HTTP 401)."""

    code = "unauthenticated"


class Forbidden(QkmsError):
    """Identified, but not allowed: RBAC, or a caller of another environment (HTTP 403)."""

    code = "forbidden"


class AuthUnavailableError(QkmsError):
    """The Kubernetes API could not answer a TokenReview or SubjectAccessReview (HTTP 503)."""

    code = "auth_unavailable"


class KeyNotFoundError(QkmsError, LookupError):
    code = "key_not_found"

    def __init__(self, key_id: str) -> None:
        super().__init__(f"Key not found: {key_id}")
        self.key_id = key_id


class EnvironmentMismatchError(QkmsError):
    code = "environment_mismatch"

    def __init__(self, key_id: str, key_environment: str, environment: str, *,
                 field: str | None = None) -> None:
        super().__init__(
            f"Environment mismatch: key {key_id} belongs to environment "
            f"'{key_environment}' and cannot be used from '{environment}'", field=field
        )
        self.key_environment = key_environment
        self.environment = environment


class KeyStateError(QkmsError):
    """The key version exists but its state refuses the operation."""

    code = "key_state"


class KeyRevokedError(KeyStateError):
    code = "key_revoked"


class IntegrityError(QkmsError):
    """A ciphertext, token or stored record failed authentication."""

    code = "integrity"


class DecryptionError(IntegrityError):
    code = "decryption_failed"


class RecordCorruptError(IntegrityError):
    code = "record_corrupt"

    def __init__(self, record: str, reason: str) -> None:
        super().__init__(f"Stored record {record} is corrupt or was tampered with: {reason}")
        self.record = record


class RecordRollbackError(RecordCorruptError):
    """A key's record is older than the audit chain says it is: an old copy was put back.
    The key is refused (HTTP 503) rather than served from the older state."""

    code = "record_rollback"

    def __init__(self, record: str, key: str, found: int, expected: int,
                 key_ids: list[str] | None = None) -> None:
        IntegrityError.__init__(
            self, f"Stored record {record} was rolled back: it holds generation {found} of "
                  f"key {key}, the audit chain says {expected} or later; the key is refused "
                  "until its newest record is put back or it is revoked")
        self.record = record
        self.key = key
        self.found = found
        self.expected = expected
        self.key_ids = list(key_ids or [])
        self.stale: object = None  # the rolled-back record itself (``store.catalog``)


class StorageError(QkmsError):
    """The key store refused a write (disk full, read-only, the Kubernetes API down)."""

    code = "storage_failed"

    def __init__(self, record: str, reason: str) -> None:
        super().__init__(f"Key store write failed: {record}: {reason}")
        self.record = record


class ProviderUnavailableError(QkmsError):
    code = "provider_unavailable"

    def __init__(self, detail: str = "") -> None:
        message = "KMS provider unavailable"
        super().__init__(f"{message}: {detail}" if detail else message)


class RotationFailedError(QkmsError):
    code = "rotation_failed"

    def __init__(self, why: str) -> None:
        super().__init__(f"Key rotation failed: {why}")


class RecordExistsError(StorageError):
    """A new key's record was written first by another process on the same store (two
    replicas, or two services of one environment, making the same name at once)."""

    def __init__(self, record: str) -> None:
        super().__init__(record, "another writer created it first")


class AuditStorageError(QkmsError):
    code = "audit_storage_failed"

    def __init__(self, detail: str = "") -> None:
        message = "Audit event storage failed"
        super().__init__(f"{message}: {detail}" if detail else message)


class KekMismatchError(QkmsError):
    """A file store and the master key a command was given do not belong together."""

    code = "kek_mismatch"
