"""What qkms records about a key: its version chain and each version's state.

A *key* has a stable name and a chain of *versions*; each version has its own
key ID (``key_<env>_<id>``), algorithm (a migration may change it), state and
provider handle.  These models are persisted in the catalog and returned by
the service, so they carry no private material: ``provider_ref`` is an opaque
handle (a Vault key name, an AWS key ARN, a wrapped-blob record ID).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .enums import Environment, ProviderType, Usage, VersionState


class _Model(BaseModel):
    model_config = ConfigDict(
        ser_json_bytes="base64", val_json_bytes="base64", use_enum_values=False, extra="forbid"
    )


class KeyVersion(_Model):
    key_id: str
    version: int
    algorithm: str
    state: VersionState = VersionState.ACTIVE
    created_at: datetime
    changed_at: datetime
    grace_until: datetime | None = None
    delete_after: datetime | None = None
    state_before_deletion: VersionState | None = None
    reason: str | None = None
    provider: ProviderType = ProviderType.LOCAL_DEV
    provider_ref: dict[str, Any] = Field(default_factory=dict)
    public_key: bytes | None = None


class KeyRecord(_Model):
    """The catalog entry for one key name."""

    name: str
    environment: Environment
    usage: Usage
    owner: str
    rotation_schedule: str
    grace_period: str
    provider: ProviderType = ProviderType.LOCAL_DEV
    created_at: datetime
    last_rotated_at: datetime
    versions: list[KeyVersion]
    labels: dict[str, str] = Field(default_factory=dict)
    # Request tokens already honoured (emergency rotation, revocation), so a
    # replayed request from GitOps or a retried handler runs exactly once.
    handled_requests: list[str] = Field(default_factory=list)
    revision: int = 0

    @property
    def current(self) -> KeyVersion:
        return self.versions[-1]

    @property
    def algorithm(self) -> str:
        return self.current.algorithm


class KeyMetadata(_Model):
    """What ``create_key`` and ``get_key`` return: one version of a key, public only."""

    key_id: str
    name: str
    version: int
    algorithm: str
    usage: Usage
    environment: Environment
    provider: ProviderType
    state: VersionState
    owner: str
    created_at: datetime
    rotation_schedule: str
    next_rotation: datetime | None = None
    grace_until: datetime | None = None
    public_key: bytes | None = None
    public_key_pem: str | None = None
    provider_mode: str | None = None
