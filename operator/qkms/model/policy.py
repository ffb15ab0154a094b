"""The KeyPolicy resource: one environment's provider, rotation schedules, grace,
allowed and preferred algorithms, PQC policy, backups and audit retention."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import (
    AwareDatetime,
    Field,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from qkms.errors import (
    InvalidInputError,
    PQCDisabledError,
)

from . import schedules as lifecycle
from .algorithms import check_usage, resolve_algorithm
from .base import (
    AlgorithmName,
    Condition,
    DeletionWindow,
    DnsName,
    IsoDuration,
    UrlText,
    _conditions,
    _reported,
    _Resource,
    _section,
    _Spec,
    _Status,
    _unique,
    parse,
)
from .enums import Environment, ProviderType, Usage

# -- KeyPolicy -----------------------------------------------------------------------

_SECRET_WORDS = frozenset({
    "token", "password", "passwd", "passphrase", "secret", "pin", "credential",
    "credentials", "private", "apikey", "accesskey",
})


NOT_CREDENTIALS = frozenset({"tokenLabel"})  # a PKCS#11 token's name, not a secret


def credential_like(key: str) -> bool:
    """Whether a settings key names a credential (``token``, ``hsmPin``, ``clientSecret``...)."""
    if key in NOT_CREDENTIALS:
        return False
    words = [w.lower() for w in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", key)]
    pairs = {a + b for a, b in zip(words, words[1:], strict=False)}
    return bool(_SECRET_WORDS & (set(words) | pairs))


class SecretRef(_Spec):
    """A Secret that holds the provider's credentials (token, PIN, client secret...)."""

    name: DnsName
    """Name of the Secret."""
    namespace: DnsName | None = None
    """Namespace of the Secret; defaults to the operator's own namespace."""


class ProviderSpec(_Spec):
    """Where this environment's key material lives."""

    type: ProviderType = ProviderType.LOCAL_DEV
    """The key provider."""
    settings: dict[str, str] = Field(default_factory=dict)
    """Non-secret provider settings: address, mountPath, region, keyId, vaultUrl, library, slot...
    Credentials are refused here (the operator rejects credential-like keys such as token,
    password, pin or clientSecret); pass them with credentialsSecretRef."""
    credentials_secret_ref: SecretRef | None = None
    """The Secret that holds the provider's credentials: the only way credentials reach qkms."""

    @field_validator("settings")
    @classmethod
    def _no_credentials(cls, settings: dict[str, str]) -> dict[str, str]:
        for key in settings:
            if credential_like(key):
                raise PydanticCustomError(
                    "invalid_input",
                    "{key} looks like a credential; credentials are never inline: "
                    "put them in a Secret and name it in credentialsSecretRef",
                    {"key": repr(key)},
                )
        return settings


def _schedule(usage: Usage) -> Any:
    return Field(lifecycle.DEFAULT_ROTATION[usage.value], alias=usage.value,
                 description=f"Rotation period of {usage.value} keys.")


class RotationSchedule(_Spec):
    """How often keys of each usage rotate (ISO 8601 durations)."""

    signing: IsoDuration = _schedule(Usage.SIGNING)
    encryption: IsoDuration = _schedule(Usage.ENCRYPTION)
    key_derivation: IsoDuration = _schedule(Usage.KEY_DERIVATION)
    authentication: IsoDuration = _schedule(Usage.AUTHENTICATION)
    transport: IsoDuration = _schedule(Usage.TRANSPORT)

    def for_usage(self, usage: Usage) -> str:
        return str(getattr(self, usage.value.lower()))


class BackupPolicy(_Spec):
    """Backups of wrapped key material."""

    enabled: bool = True
    retention_period: IsoDuration = "P7Y"
    """How long backups are kept (ISO 8601 duration)."""
    encryption_required: bool = True
    """Backups are written only encrypted."""


class AuditPolicy(_Spec):
    """The audit trail: hash-chained entries addressed by IPFS CIDs."""

    enabled: bool = True
    immutable_storage: bool = True
    """Entries are content-addressed and never rewritten."""
    retention_period: IsoDuration = "P7Y"
    """How long audit entries are kept (ISO 8601 duration)."""
    fail_closed: bool | None = None
    """Refuse an operation whose audit entry cannot be stored. Unset: true in prod, false
    elsewhere."""
    ipfs_endpoint: UrlText | None = None
    """An IPFS (kubo) HTTP API to push entries to, such as http://ipfs.ipfs:5001; unset keeps
    them in the embedded content-addressed store only."""
    checkpoint_every: int = Field(1000, ge=1)
    """Entries between signed checkpoints of the chain."""

    def fails_closed(self, environment: Environment) -> bool:
        """Whether a failed audit write refuses the operation it records."""
        if self.fail_closed is not None:
            return self.fail_closed
        return environment is Environment.PROD


class PreferredAlgorithms(_Spec):
    """Algorithms to pick, in order, when a ManagedKey names none."""

    signing: list[AlgorithmName] = ["ML-DSA-65", "Falcon-1024"]
    """For SIGNING and AUTHENTICATION keys."""
    encryption: list[AlgorithmName] = ["ML-KEM-768", "AES-256-GCM"]
    """For ENCRYPTION and TRANSPORT keys."""
    key_derivation: list[AlgorithmName] = []
    """For KEY_DERIVATION keys."""

    @field_validator("signing", "encryption", "key_derivation")
    @classmethod
    def _serve_usage(cls, names: list[str], info: ValidationInfo) -> list[str]:
        usage = Usage(str(info.field_name).upper())
        for name in names:
            with _reported():
                check_usage(resolve_algorithm(name), usage)
        return _unique(names)

    def for_usage(self, usage: Usage) -> list[str]:
        """The list a usage draws from: each list is named after its usage, and
        authentication signs while transport encrypts."""
        return list(getattr(self, _BORROWS.get(usage, usage).value.lower()))


_BORROWS = {Usage.AUTHENTICATION: Usage.SIGNING, Usage.TRANSPORT: Usage.ENCRYPTION}


class PQCPolicy(_Spec):
    """Post-quantum cryptography: whether to use it, and how to migrate to it."""

    enabled: bool = True
    """Allow post-quantum and hybrid algorithms. When false, defaults are classical."""
    migration_deadline: AwareDatetime | None = None
    """By when quantum-vulnerable keys should have migrated (RFC 3339 time)."""
    hybrid_mode: bool = False
    """Prefer hybrid algorithms (Ed25519+ML-DSA-65, X-Wing) where one serves the usage."""
    preferred_algorithms: PreferredAlgorithms = _section(PreferredAlgorithms)


HYBRID_DEFAULTS = {
    Usage.SIGNING: "Ed25519+ML-DSA-65", Usage.AUTHENTICATION: "Ed25519+ML-DSA-65",
    Usage.ENCRYPTION: "X-Wing", Usage.TRANSPORT: "X-Wing",
}
CLASSICAL_DEFAULTS = {
    Usage.SIGNING: "Ed25519", Usage.AUTHENTICATION: "Ed25519",
    Usage.ENCRYPTION: "AES-256-GCM", Usage.TRANSPORT: "AES-256-GCM",
    Usage.KEY_DERIVATION: "HKDF-SHA256",
}
PQC_DEFAULTS = {
    **CLASSICAL_DEFAULTS, Usage.SIGNING: "ML-DSA-65", Usage.AUTHENTICATION: "ML-DSA-65",
}


def preferred_algorithm(
    usage: Usage, pqc: PQCPolicy | None = None, allowed: Sequence[str] = ()
) -> str:
    """The algorithm a ManagedKey without one gets.

    Candidates in order: the hybrid for the usage (hybridMode, PQC enabled),
    the policy's preferred list, the PQC or classical default, the classical
    default, then anything in ``allowed``.  The first that serves the usage,
    is in ``allowed`` (empty allows all) and is classical when PQC is disabled
    wins.  With PQC disabled, hybridMode is ignored (a hybrid is half PQC).
    """
    pqc = pqc or PQCPolicy()
    allowed_names = {resolve_algorithm(n).name for n in allowed}
    hybrid = HYBRID_DEFAULTS.get(usage) if pqc.enabled and pqc.hybrid_mode else None
    candidates = [
        *([hybrid] if hybrid else []),
        *pqc.preferred_algorithms.for_usage(usage),
        (PQC_DEFAULTS if pqc.enabled else CLASSICAL_DEFAULTS)[usage],
        CLASSICAL_DEFAULTS[usage],
        *allowed,
    ]
    for name in candidates:
        info = resolve_algorithm(name)
        if (usage in info.usages and (not allowed_names or info.name in allowed_names)
                and (pqc.enabled or not (info.post_quantum or info.hybrid))):
            return info.name
    error = InvalidInputError if pqc.enabled else PQCDisabledError
    raise error("spec.allowedAlgorithms",
                f"no allowed algorithm serves usage {usage.value}"
                + ("" if pqc.enabled else " without post-quantum cryptography"))


class KeyPolicySpec(_Spec):
    """One environment's key policy: provider, schedules, allowed algorithms, audit, PQC."""

    environment: Environment = Field(json_schema_extra={"maxLength": 16})
    """The environment this policy governs (one KeyPolicy per environment)."""
    provider: ProviderSpec = _section(ProviderSpec)
    rotation_schedule: RotationSchedule = _section(RotationSchedule)
    grace_period: IsoDuration = lifecycle.DEFAULT_GRACE_PERIOD
    """Default grace period: how long a rotated-out version still verifies and decrypts."""
    deletion_window: DeletionWindow = lifecycle.DEFAULT_DELETION_WINDOW
    """Waiting time before a deleted key is destroyed: PnD with n from 7 to 30."""
    allowed_algorithms: list[AlgorithmName] = Field(
        default_factory=list, json_schema_extra={"x-kubernetes-list-type": "set"}
    )
    """Algorithms keys may use (canonical names or aliases); empty allows every algorithm."""
    backup_policy: BackupPolicy = _section(BackupPolicy)
    audit_policy: AuditPolicy = _section(AuditPolicy)
    pqc_policy: PQCPolicy = _section(PQCPolicy)

    @field_validator("allowed_algorithms")
    @classmethod
    def _dedupe(cls, names: list[str]) -> list[str]:
        return _unique(names)

    def allows(self, algorithm: str) -> bool:
        """Whether ``algorithm`` (any spelling) is in allowedAlgorithms (empty allows all)."""
        name = resolve_algorithm(algorithm).name
        return not self.allowed_algorithms or name in self.allowed_algorithms

    def preferred_algorithm(self, usage: Usage) -> str:
        return preferred_algorithm(usage, self.pqc_policy, self.allowed_algorithms)

    @property
    def audit_fails_closed(self) -> bool:
        return self.audit_policy.fails_closed(self.environment)


class KeyPolicyStatus(_Status):
    """What the operator last observed of this policy."""

    observed_generation: int | None = None
    """The metadata.generation the operator last acted on."""
    keys: int | None = None
    """How many ManagedKeys this policy governs."""
    conditions: list[Condition] = _conditions()


class KeyPolicy(_Resource):
    """A cluster-wide key policy for one environment (dev, staging or prod)."""

    kind: Literal["KeyPolicy"] = "KeyPolicy"
    spec: KeyPolicySpec
    status: KeyPolicyStatus = Field(default_factory=KeyPolicyStatus)


def parse_key_policy(body: Mapping[str, Any]) -> KeyPolicy:
    return parse(KeyPolicy, body)


