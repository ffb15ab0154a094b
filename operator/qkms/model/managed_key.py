"""The ManagedKey resource: one key's usage, algorithm, owner, schedule, projection,
one-shot requests (rotation, revocation, import), and its status."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from . import schedules as lifecycle
from .algorithms import check_usage, resolve_algorithm
from .base import (
    _DATA_KEY_NAME,
    AlgorithmName,
    Condition,
    DnsName,
    IsoDuration,
    NonEmpty,
    _conditions,
    _reported,
    _Resource,
    _Spec,
    _Status,
    _unique,
    parse,
)
from .enums import Environment, ProviderType, RotationReason, Usage, VersionState

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


class ManagedKey(_Resource):
    """A cryptographic key managed by qkms: created, rotated, projected and audited."""

    kind: Literal["ManagedKey"] = "ManagedKey"
    spec: ManagedKeySpec
    status: ManagedKeyStatus = Field(default_factory=ManagedKeyStatus)


def parse_managed_key(body: Mapping[str, Any]) -> ManagedKey:
    return parse(ManagedKey, body)

