"""Enumerations shared by the service, the CRDs and the API."""

from __future__ import annotations

from enum import StrEnum


class Usage(StrEnum):
    SIGNING = "SIGNING"
    ENCRYPTION = "ENCRYPTION"
    KEY_DERIVATION = "KEY_DERIVATION"
    AUTHENTICATION = "AUTHENTICATION"
    TRANSPORT = "TRANSPORT"


class Operation(StrEnum):
    SIGN = "SIGN"
    VERIFY = "VERIFY"
    ENCRYPT = "ENCRYPT"
    DECRYPT = "DECRYPT"
    DERIVE = "DERIVE"
    ENCAPSULATE = "ENCAPSULATE"
    DECAPSULATE = "DECAPSULATE"


class Environment(StrEnum):
    DEV = "dev"
    STAGING = "staging"
    PROD = "prod"


class ProviderType(StrEnum):
    LOCAL_DEV = "LOCAL_DEV"
    HASHICORP_VAULT = "HASHICORP_VAULT"
    AWS_KMS = "AWS_KMS"
    AZURE_KEY_VAULT = "AZURE_KEY_VAULT"
    HSM = "HSM"


class VersionState(StrEnum):
    ACTIVE = "ACTIVE"
    GRACE = "GRACE"
    RETIRED = "RETIRED"
    REVOKED = "REVOKED"
    PENDING_DELETION = "PENDING_DELETION"
    DESTROYED = "DESTROYED"


class RotationReason(StrEnum):
    SCHEDULED = "SCHEDULED"
    MANUAL = "MANUAL"
    COMPROMISE = "COMPROMISE"
    MIGRATION = "MIGRATION"
    POLICY = "POLICY"


class Family(StrEnum):
    """What an algorithm does, which fixes the operations it can offer."""

    SIGNATURE = "SIGNATURE"
    RSA = "RSA"  # signs (PSS) or encrypts (OAEP), by usage
    AEAD = "AEAD"
    KEM = "KEM"
    KDF = "KDF"


USAGE_OPERATIONS: dict[Usage, frozenset[Operation]] = {
    Usage.SIGNING: frozenset({Operation.SIGN, Operation.VERIFY}),
    Usage.AUTHENTICATION: frozenset({Operation.SIGN, Operation.VERIFY}),
    Usage.ENCRYPTION: frozenset(
        {Operation.ENCRYPT, Operation.DECRYPT, Operation.ENCAPSULATE, Operation.DECAPSULATE}
    ),
    Usage.TRANSPORT: frozenset(
        {Operation.ENCRYPT, Operation.DECRYPT, Operation.ENCAPSULATE, Operation.DECAPSULATE}
    ),
    Usage.KEY_DERIVATION: frozenset({Operation.DERIVE}),
}

FAMILY_OPERATIONS: dict[Family, frozenset[Operation]] = {
    Family.SIGNATURE: frozenset({Operation.SIGN, Operation.VERIFY}),
    Family.RSA: frozenset({Operation.SIGN, Operation.VERIFY, Operation.ENCRYPT, Operation.DECRYPT}),
    Family.AEAD: frozenset({Operation.ENCRYPT, Operation.DECRYPT}),
    Family.KEM: frozenset(
        {Operation.ENCAPSULATE, Operation.DECAPSULATE, Operation.ENCRYPT, Operation.DECRYPT}
    ),
    Family.KDF: frozenset({Operation.DERIVE}),
}

# Operations a version in GRACE still allows: reading old data, never making new.
GRACE_OPERATIONS = frozenset({Operation.VERIFY, Operation.DECRYPT, Operation.DECAPSULATE})
