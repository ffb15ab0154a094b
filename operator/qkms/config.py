"""Settings from the environment (the seed's names), overridable by flags."""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from qkms.errors import InvalidInputError
from qkms.model.enums import Environment, ProviderType

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _flag(name: str, value: str) -> bool:
    text = value.strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise InvalidInputError(name, f"{value!r} is not a boolean (true/false)")


def _enum(kind: type[enum.Enum], name: str, value: str) -> Any:
    try:
        return kind(value.strip())
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise InvalidInputError(name, f"{value!r} is not one of {allowed}") from None


@dataclass(frozen=True)
class Settings:
    environment: Environment = Environment.DEV
    provider: ProviderType = ProviderType.LOCAL_DEV
    audit_enabled: bool = True
    pqc_enabled: bool = True
    rotation_enabled: bool = True
    data_dir: Path = Path(".qkms")
    master_key_file: Path | None = None
    key_cache_seconds: float = 60.0
    catalog_ttl: float = 1.0  # how stale another replica's rotation or revocation may be
    audit_fail_closed: bool | None = None  # None: closed in prod, open elsewhere
    audit_retention: str = "P7Y"  # the KeyPolicy's auditPolicy.retentionPeriod
    # AES-GCM and ChaCha20-Poly1305 versions take random 96-bit nonces: NIST SP 800-38D
    # allows 2^32 encryptions per key; qkms rotates (SCHEDULED, audited) well before that.
    aead_max_encryptions: int = 2**30
    # How old another process's open intent (store/intents.py) must be before the sweep
    # treats it as cut short: longer than any provider call may take.
    intent_timeout: float = 120.0
    # Holds credentials (VAULT_TOKEN, HSM_PIN, ...): never in repr, logs or errors.
    provider_options: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def fails_closed(self) -> bool:
        """Refuse operations whose audit entry cannot be stored (as Vault does)."""
        if self.audit_fail_closed is not None:
            return self.audit_fail_closed
        return self.environment is Environment.PROD

    @property
    def kek_path(self) -> Path:
        return self.master_key_file or self.data_dir / "master.key"

    def scoped(self, environment: Environment | None = None) -> Settings:
        """These settings for one environment's folder of the data dir (``qkms.store.layout``):
        its store and audit chain in ``<data_dir>/<env>/``, the master key still the data
        dir's own.  Every command, ``qkms serve`` and the operator open a service this way."""
        environment = environment or self.environment
        return replace(self, environment=environment,
                       data_dir=self.data_dir / environment.value, master_key_file=self.kek_path)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        if "QKMS_ENVIRONMENT" in env:
            values["environment"] = _enum(Environment, "QKMS_ENVIRONMENT", env["QKMS_ENVIRONMENT"])
        if "KMS_PROVIDER" in env:
            values["provider"] = _enum(ProviderType, "KMS_PROVIDER", env["KMS_PROVIDER"])
        for var, key in (("AUDIT_ENABLED", "audit_enabled"), ("QKMS_PQC_ENABLED", "pqc_enabled"),
                         ("QKMS_ROTATION_ENABLED", "rotation_enabled"),
                         ("QKMS_AUDIT_FAIL_CLOSED", "audit_fail_closed")):
            if var in env:
                values[key] = _flag(var, env[var])
        if "QKMS_DATA_DIR" in env:
            values["data_dir"] = Path(env["QKMS_DATA_DIR"])
        if env.get("QKMS_MASTER_KEY_FILE"):
            values["master_key_file"] = Path(env["QKMS_MASTER_KEY_FILE"])
        for var, key in (("QKMS_KEY_CACHE_SECONDS", "key_cache_seconds"),
                         ("QKMS_CATALOG_TTL_SECONDS", "catalog_ttl"),
                         ("QKMS_INTENT_TIMEOUT_SECONDS", "intent_timeout")):
            if var in env:
                try:
                    values[key] = float(env[var])
                except ValueError:
                    raise InvalidInputError(var, "must be a number") from None
        if "QKMS_AEAD_MAX_ENCRYPTIONS" in env:
            text = env["QKMS_AEAD_MAX_ENCRYPTIONS"].strip().replace("_", "")
            if not text.isdigit() or not 1 <= int(text) <= 2**32:
                raise InvalidInputError("QKMS_AEAD_MAX_ENCRYPTIONS",
                                        "must be an integer from 1 to 4294967296 (2^32)")
            values["aead_max_encryptions"] = int(text)
        values["provider_options"] = {
            k: v for k, v in env.items()
            if k.startswith(("VAULT_", "AWS_", "AZURE_", "HSM_"))
        }
        settings = cls(**values)
        for key, kind, flag in (("environment", Environment, "--environment"),
                                ("provider", ProviderType, "--provider")):
            if isinstance(overrides.get(key), str):  # from a command-line flag
                overrides[key] = _enum(kind, flag, overrides[key])
        return replace(settings, **{k: v for k, v in overrides.items() if v is not None})


def listens_on_loopback(listen: str) -> bool:
    """Whether ``HOST:PORT`` listens on loopback only (127.0.0.0/8, ::1, localhost): where
    plain HTTP may stay (standalone), as nothing off this machine can reach it."""
    import ipaddress

    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # 0.0.0.0, '', a name: every interface, or not only this machine
