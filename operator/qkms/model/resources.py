"""The custom resources' bodies: KeyPolicy and ManagedKey, spec and status.

These models are the one truth for what a resource may say: the operator
validates every body with them (``parse_key_policy``, ``parse_managed_key``)
and ``qkms.k8s.crds`` generates the CRDs' OpenAPI schemas from them, so the
API server and the operator cannot disagree about a field's name, type,
default or pattern.  Field docstrings become the CRD descriptions that
``kubectl explain`` shows.

Where the two layers differ, the CRD is the stricter one about spelling
(algorithm names must be written exactly as a canonical name or an alias)
and the operator is the stricter one about meaning (checks that CEL cannot
express, such as a grace period shorter than an ISO 8601 rotation schedule,
or no credential-like key among the provider settings).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from qkms.errors import (
    InvalidDurationError,
    InvalidInputError,
    PQCDisabledError,
    UnsupportedAlgorithmError,
)

from . import schedules as lifecycle
from .algorithms import ALGORITHMS, check_usage, resolve_algorithm
from .durations import DURATION_PATTERN, parse_duration
from .enums import Environment, ProviderType, RotationReason, Usage, VersionState
from .names import API_VERSION, ENVIRONMENT_LABEL, GROUP, VERSION  # noqa: F401 - exported

# -- field types ----------------------------------------------------------------



DELETION_WINDOW_PATTERN = r"^P([7-9]|[12][0-9]|30)D$"
"""The deletion window in the one form the CRD can range-check: whole days, 7 to 30.

ISO 8601 in general (``P1M``, ``P2W``) has no CEL-checkable length, so the
window must be written ``PnD``; a test ties the bounds to ``lifecycle``.
"""

_DNS_NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
_DATA_KEY_NAME = r"^[-._a-zA-Z0-9]+$"
# Condition reasons follow metav1.Condition: CamelCase, machine-readable.
_CONDITION_REASON = r"^([A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?)?$"

ALGORITHM_SPELLINGS: tuple[str, ...] = tuple(
    name for info in ALGORITHMS for name in (info.name, *info.aliases)
)
"""Every accepted algorithm spelling (canonical names and aliases), in registry order."""


@contextmanager
def _reported() -> Iterator[None]:
    """Carry a qkms input error through pydantic with its code, so ``parse`` restores its class."""
    try:
        yield
    except InvalidInputError as exc:
        raise PydanticCustomError(exc.code, "{reason}", {"reason": exc.reason}) from None


def _duration(value: str) -> str:
    text = value.strip()
    with _reported():
        parse_duration(text, "duration")
    return text


def _algorithm(value: str) -> str:
    with _reported():
        return resolve_algorithm(value).name


def _deletion_window(value: str) -> str:
    text = value.strip()
    if not re.fullmatch(r"P\d+D", text):
        raise PydanticCustomError(
            "invalid_input", "{value} must be written PnD, whole days (for example P30D)",
            {"value": repr(value)},
        )
    with _reported():
        lifecycle.validate_deletion_window(text)
    return text


IsoDuration = Annotated[
    str,
    AfterValidator(_duration),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "maxLength": 64}),
]
AlgorithmName = Annotated[
    str,
    AfterValidator(_algorithm),
    WithJsonSchema({"type": "string", "enum": list(ALGORITHM_SPELLINGS), "maxLength": 64}),
]
DeletionWindow = Annotated[
    str, AfterValidator(_deletion_window), WithJsonSchema({"type": "string", "maxLength": 8})
]
DnsName = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=_DNS_NAME)]
NonEmpty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, pattern=r"\S")]
UrlText = Annotated[str, StringConstraints(max_length=2048, pattern=r"^https?://[^\s/$.?#][^\s]*$")]


def _unique(values: list[Any]) -> list[Any]:
    """Drop repeats (after alias normalisation), keeping the first position."""
    return list(dict.fromkeys(values))


class _Spec(BaseModel):
    """Spec parts: camelCase in YAML, unknown fields are errors."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid",
        use_attribute_docstrings=True,
    )

    def to_dict(self) -> dict[str, Any]:
        """The body form: camelCase, JSON types, unset optionals left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class _Status(_Spec):
    """Status parts: written by the operator; foreign keys (Kopf's own) are ignored."""

    model_config = ConfigDict(extra="ignore")


def _section(model: type[BaseModel]) -> Any:
    """A sub-object that defaults to all its own defaults, in the model and in the CRD."""
    return Field(default_factory=model, json_schema_extra={"default": {}})


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


# -- conditions ------------------------------------------------------------------------

class ConditionType(StrEnum):
    READY = "Ready"
    ROTATING = "Rotating"
    DEGRADED = "Degraded"
    PQC_MIGRATION = "PQCMigration"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(_Status):
    """One aspect of the resource's state, in the metav1.Condition shape."""

    type: str
    """Ready, Rotating, Degraded or PQCMigration."""
    status: ConditionStatus
    reason: Annotated[str, StringConstraints(max_length=1024, pattern=_CONDITION_REASON)] = ""
    """A CamelCase word for machines, such as KeyCreated or ProviderUnavailable."""
    message: str = ""
    """A sentence for humans."""
    last_transition_time: AwareDatetime
    """When status last changed (not when the condition was last written)."""
    observed_generation: int | None = None
    """The metadata.generation this condition was computed from."""


def set_condition(
    conditions: Sequence[Condition],
    type: str,
    status: ConditionStatus | str | bool,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> list[Condition]:
    """Return ``conditions`` with ``type`` set, keeping its place and, when the status
    is unchanged, its lastTransitionTime (so the time says when things changed)."""
    if isinstance(status, bool):
        status = ConditionStatus.TRUE if status else ConditionStatus.FALSE
    status = ConditionStatus(status)
    old = get_condition(conditions, type)
    since = old.last_transition_time if old is not None and old.status is status else now
    new = Condition(type=str(type), status=status, reason=reason, message=message,
                    last_transition_time=since, observed_generation=generation)
    if old is None:
        return [*conditions, new]
    return [new if c.type == type else c for c in conditions]


def get_condition(conditions: Sequence[Condition], type: str) -> Condition | None:
    return next((c for c in conditions if c.type == type), None)


def _conditions() -> Any:
    """A conditions list keyed by type, as metav1 declares it (server-side apply merges by type)."""
    return Field(default_factory=list, json_schema_extra={
        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"],
    })


class KeyPolicyStatus(_Status):
    """What the operator last observed of this policy."""

    observed_generation: int | None = None
    """The metadata.generation the operator last acted on."""
    keys: int | None = None
    """How many ManagedKeys this policy governs."""
    conditions: list[Condition] = _conditions()


# -- ManagedKey -------------------------------------------------------------------------

class ProjectionFormat(StrEnum):
    PEM = "PEM"
    JWKS = "JWKS"
    RAW = "RAW"


class DeletionPolicy(StrEnum):
    RETAIN = "Retain"
    DELETE = "Delete"


class RequestReason(StrEnum):
    SCHEDULED = "SCHEDULED"
    MANUAL = "MANUAL"
    COMPROMISE = "COMPROMISE"


class Projection(_Spec):
    """Where the key's public material is published for workloads (never private material)."""

    secret_name: DnsName | None = None
    """A Secret in the key's namespace to write the public material to."""
    config_map_name: DnsName | None = None
    """A ConfigMap in the key's namespace to write the public material to."""
    formats: list[ProjectionFormat] = Field(
        default=[ProjectionFormat.PEM, ProjectionFormat.JWKS],
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    """PEM (SubjectPublicKeyInfo), JWKS (every verifying version) and RAW (base64 bytes)."""

    @field_validator("formats")
    @classmethod
    def _dedupe(cls, formats: list[ProjectionFormat]) -> list[ProjectionFormat]:
        return _unique(formats)

    @model_validator(mode="after")
    def _has_target(self) -> Projection:
        if self.secret_name is None and self.config_map_name is None:
            raise PydanticCustomError(
                "invalid_input", "projection needs a secretName or a configMapName"
            )
        return self


class RotationRequest(_Spec):
    """A one-shot rotation request, GitOps-friendly: each new token rotates exactly once."""

    token: Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"\S")]
    """Any value not used before (a date, a ticket); changing it asks for one more rotation."""
    reason: RequestReason = RequestReason.MANUAL
    """COMPROMISE revokes the old version at once instead of giving it a grace period."""

    @property
    def rotation_reason(self) -> RotationReason:
        return RotationReason(self.reason.value)


class Revocation(_Spec):
    """Revoke the key: every live version stops working. Permanent."""

    reason: NonEmpty
    """Why, for the audit trail."""


class ImportSource(_Spec):
    """Bring your own key: the key material comes from a Secret in the key's namespace."""

    secret_name: DnsName
    key: Annotated[str, StringConstraints(max_length=253, pattern=_DATA_KEY_NAME)] | None = None
    """The Secret's data key that holds the key; defaults to the only one."""


class ManagedKeySpec(_Spec):
    """A key the operator creates, rotates and projects."""

    usage: Usage = Field(json_schema_extra={"maxLength": 16})
    """What the key is for. Immutable: create a new ManagedKey for another usage."""
    algorithm: AlgorithmName | None = None
    """Canonical name or alias; the policy's preferred algorithm when unset. Changing it
    (within the usage) migrates the key at its next rotation."""
    owner: NonEmpty
    """The team or service accountable for the key."""
    environment: Environment | None = None
    """Must equal the namespace's qkms.io/environment label (checked by the operator)."""
    policy_ref: DnsName | None = None
    """The KeyPolicy to follow; defaults to the one for the namespace's environment."""
    rotation_schedule: IsoDuration | None = None
    """Overrides the policy's schedule for this usage (ISO 8601 duration)."""
    grace_period: IsoDuration | None = None
    """Overrides the policy's grace period. Must be shorter than the rotation schedule: the
    operator checks this, because CEL cannot compare ISO 8601 durations."""
    projection: Projection | None = None
    deletion_policy: DeletionPolicy = DeletionPolicy.RETAIN
    """Retain keeps the key in the provider when the resource is deleted; Delete schedules
    its destruction after the policy's deletion window."""
    rotation_request: RotationRequest | None = None
    revoked: Revocation | None = None
    import_from: ImportSource | None = None

    @field_validator("algorithm")
    @classmethod
    def _serves_usage(cls, name: str | None, info: ValidationInfo) -> str | None:
        usage = info.data.get("usage")
        if name is not None and usage is not None:
            with _reported():
                check_usage(resolve_algorithm(name), usage)
        return name

    @field_validator("grace_period")
    @classmethod
    def _shorter_than_schedule(cls, grace: str | None, info: ValidationInfo) -> str | None:
        schedule = info.data.get("rotation_schedule")
        if grace is not None and schedule is not None:
            with _reported():
                lifecycle.validate_schedule(schedule, grace)
        return grace


class KeyVersionStatus(_Status):
    """One version in the key's chain; each has its own key ID."""

    key_id: str
    version: int
    algorithm: str
    state: VersionState
    grace_until: AwareDatetime | None = None
    """Until when a version in GRACE still verifies and decrypts."""
    created_at: AwareDatetime | None = None


class ManagedKeyStatus(_Status):
    """What the operator last observed and did: versions, rotation times, conditions."""

    key_id: str | None = None
    """The active version's key ID (key_<env>_<id>)."""
    key_name: str | None = None
    """The stable name that always resolves to the active version."""
    current_version: int | None = None
    algorithm: str | None = None
    provider: ProviderType | None = None
    environment: Environment | None = None
    versions: list[KeyVersionStatus] = Field(default_factory=list)
    """The version chain, oldest first."""
    next_rotation: AwareDatetime | None = None
    last_rotation: AwareDatetime | None = None
    conditions: list[Condition] = _conditions()
    """Ready, Rotating, Degraded and PQCMigration."""
    observed_generation: int | None = None
    """The metadata.generation the operator last acted on."""
    last_audit_cid: str | None = None
    """The IPFS CID of the last audit entry about this key."""
    last_request_token: str | None = None
    """The last spec.rotationRequest.token honoured; the same token never rotates twice."""
    phase: str | None = None
    """A one-word summary for humans (Pending, Ready, Rotating, Revoked, Failed); the
    conditions are authoritative."""


# -- whole resources -----------------------------------------------------------------

_METADATA_TYPES: dict[str, type] = {"name": str, "namespace": str, "uid": str,
                                     "resourceVersion": str, "generation": int,
                                     "labels": dict, "annotations": dict}


class _Resource(_Spec):
    model_config = ConfigDict(extra="ignore")

    api_version: Literal["qkms.io/v1alpha1"] = "qkms.io/v1alpha1"  # API_VERSION, as a literal
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metadata")
    @classmethod
    def _object_meta(cls, meta: dict[str, Any]) -> dict[str, Any]:
        """What the API server guarantees, checked again for bodies nothing else checked
        (``qkms serve`` reads hand-written YAML): types, string maps and DNS names."""
        for key, kind in _METADATA_TYPES.items():
            value = meta.get(key)
            if value is not None and (type(value) is not kind if kind is int
                                      else not isinstance(value, kind)):
                raise PydanticCustomError("invalid_input", "{key} must be a {kind}, not {value}",
                                          {"key": key, "kind": kind.__name__,
                                           "value": type(value).__name__})
        for key in ("labels", "annotations"):
            if not all(isinstance(k, str) and isinstance(v, str)
                       for k, v in (meta.get(key) or {}).items()):
                raise PydanticCustomError("invalid_input", "{key} must map strings to strings",
                                          {"key": key})
        for key in ("name", "namespace"):
            value = meta.get(key)
            if value is not None and (len(value) > 253 or not re.fullmatch(_DNS_NAME, value)):
                raise PydanticCustomError(
                    "invalid_input", "{key} {value} must be a lower-case DNS name",
                    {"key": key, "value": repr(value[:64])})
        return meta

    @property
    def name(self) -> str | None:
        return self.metadata.get("name")

    @property
    def namespace(self) -> str | None:
        return self.metadata.get("namespace")

    @property
    def generation(self) -> int | None:
        return self.metadata.get("generation")


class KeyPolicy(_Resource):
    """A cluster-wide key policy for one environment (dev, staging or prod)."""

    kind: Literal["KeyPolicy"] = "KeyPolicy"
    spec: KeyPolicySpec
    status: KeyPolicyStatus = Field(default_factory=KeyPolicyStatus)


class ManagedKey(_Resource):
    """A cryptographic key managed by qkms: created, rotated, projected and audited."""

    kind: Literal["ManagedKey"] = "ManagedKey"
    spec: ManagedKeySpec
    status: ManagedKeyStatus = Field(default_factory=ManagedKeyStatus)


# -- parsing ----------------------------------------------------------------------------

_ERRORS: dict[str, type[InvalidInputError]] = {
    cls.code: cls for cls in (UnsupportedAlgorithmError, InvalidDurationError, PQCDisabledError)
}
_REASONS = {"extra_forbidden": "unknown field", "missing": "required field is missing"}

R = TypeVar("R", bound=BaseModel)


def field_path(loc: Sequence[str | int]) -> str:
    """Pydantic's error location as users write it: ``spec.projection.formats[1]``."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def _plain(value: Any) -> Any:
    """Kopf hands out Mapping views; pydantic wants plain dicts and lists."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def parse(model: type[R], body: Mapping[str, Any]) -> R:
    """Validate a body, raising ``InvalidInputError`` that names the first bad field."""
    try:
        return model.model_validate(_plain(body))
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        error = _ERRORS.get(first["type"], InvalidInputError)
        reason = _REASONS.get(first["type"], first["msg"])
        raise error(field_path(first["loc"]) or "body", reason) from exc


def parse_key_policy(body: Mapping[str, Any]) -> KeyPolicy:
    return parse(KeyPolicy, body)


def parse_managed_key(body: Mapping[str, Any]) -> ManagedKey:
    return parse(ManagedKey, body)
