"""Settings from the environment (the seed's names), overridable by flags."""

from __future__ import annotations

import enum
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from qkms.errors import InvalidInputError
from qkms.model import durations
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


AUDIT_SYNC_MODES = ("fsync", "write")  # audit/chain.py's SYNC_MODES (config sits below it)


@dataclass(frozen=True)
class AuditOptions:
    """How the service's audit chain writes (``AuditChain``'s keyword arguments, its own
    defaults): the chain itself takes plain arguments and never reads the environment."""

    sync: str = "fsync"  # QKMS_AUDIT_SYNC: fsync (group commit) or write
    fsync_interval: float = 1.0  # QKMS_AUDIT_FSYNC_INTERVAL: with sync=write
    checkpoint_interval: float = 60.0  # QKMS_AUDIT_CHECKPOINT_SECONDS
    checkpoint_every: int = 1000  # QKMS_AUDIT_CHECKPOINT_EVERY: entries
    ipfs_endpoint: str | None = None  # QKMS_IPFS_API: a kubo RPC endpoint

    def chain_arguments(self) -> dict[str, Any]:
        return {"sync": self.sync, "fsync_interval": self.fsync_interval,
                "checkpoint_interval": self.checkpoint_interval,
                "checkpoint_every": self.checkpoint_every, "ipfs_endpoint": self.ipfs_endpoint}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AuditOptions:
        """An empty variable is an unset one, as before these moved here."""
        env = {k: v for k, v in (os.environ if env is None else env).items() if v.strip()}
        defaults = cls()
        sync = env.get("QKMS_AUDIT_SYNC", defaults.sync).strip().lower()
        if sync not in AUDIT_SYNC_MODES:
            raise InvalidInputError("QKMS_AUDIT_SYNC",
                                    f"{sync!r} is not one of {', '.join(AUDIT_SYNC_MODES)}")
        every = _integer(env, "QKMS_AUDIT_CHECKPOINT_EVERY")
        if every is not None and every < 1:
            raise InvalidInputError("QKMS_AUDIT_CHECKPOINT_EVERY", "must be at least 1 entry")
        return cls(
            sync=sync,
            fsync_interval=_seconds(env, "QKMS_AUDIT_FSYNC_INTERVAL", defaults.fsync_interval,
                                    zero=True),
            checkpoint_interval=_seconds(env, "QKMS_AUDIT_CHECKPOINT_SECONDS",
                                         defaults.checkpoint_interval, zero=True),
            checkpoint_every=defaults.checkpoint_every if every is None else every,
            ipfs_endpoint=env["QKMS_IPFS_API"].strip() if "QKMS_IPFS_API" in env else None,
        )


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
    # QKMS_AUDIT_WRITER (the pod's name in a cluster, ``w<n>`` for a serve worker): this
    # process's own audit chain, ``<data_dir>/audit/<writer>``, and AEAD budget record.
    audit_writer: str = ""
    audit_mac_rotation: timedelta = timedelta(days=90)  # QKMS_AUDIT_MAC_ROTATION
    audit: AuditOptions = field(default_factory=AuditOptions)  # QKMS_AUDIT_*, QKMS_IPFS_API
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
        values["audit_writer"] = env.get("QKMS_AUDIT_WRITER", "").strip()
        if env.get("QKMS_AUDIT_MAC_ROTATION", "").strip():
            values["audit_mac_rotation"] = timedelta(seconds=durations.seconds(
                env["QKMS_AUDIT_MAC_ROTATION"].strip(), "QKMS_AUDIT_MAC_ROTATION"))
        values["audit"] = AuditOptions.from_env(env)
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


INSECURE_KEK = "QKMS_ALLOW_INSECURE_KEK"


def insecure_kek_allowed(env: Mapping[str, str] | None = None) -> bool:
    """``QKMS_ALLOW_INSECURE_KEK``: use a master-key file others may read (with a warning).
    Read when a key file is opened (``store.kek``), not kept in ``Settings``: backups, the
    audit MAC keyring and rewrap open key files without a service's settings.  Unset or
    empty: no; ``1``/``true``/``yes``: yes; ``0``/``false``/``no``: no; else refused."""
    text = (os.environ if env is None else env).get(INSECURE_KEK, "").strip()
    return _flag(INSECURE_KEK, text) if text else False


WORKERS_ENV = "QKMS_DATA_PLANE_WORKERS"
CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"


def cpu_limit(cpu_max: Path = CPU_MAX) -> int | None:
    """The cores of the container's CPU limit (cgroup v2 ``cpu.max``: a pod's
    ``resources.limits.cpu``), rounded up; None when there is none."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def available_cores(cpu_max: Path = CPU_MAX) -> int:
    """The cores this process may run on, capped by the container's CPU limit."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, cpu_limit(cpu_max) or cores))


def data_plane_workers(env: Mapping[str, str], cpus: int | None = None) -> int:
    """``QKMS_DATA_PLANE_WORKERS``: 1 to 64, or ``auto`` (unset): ``cpus`` (else
    ``available_cores()``), at most 64."""
    text = env.get(WORKERS_ENV, "").strip().lower()
    if text in ("", "auto"):
        return max(1, min(64, cpus if cpus is not None else available_cores()))
    if text.isdigit() and 1 <= int(text) <= 64:
        return int(text)
    raise InvalidInputError(WORKERS_ENV, f"must be auto or an integer from 1 to 64, not {text!r}")


def pod_cores(cpu_max: Path = CPU_MAX) -> int:
    """What ``auto`` means for an operator replica: one worker per core of its CPU limit
    (500m: one), and one without a limit: a pod with none would otherwise start one per
    node core, each ~100 MiB, past its memory limit."""
    return available_cores(cpu_max) if cpu_limit(cpu_max) is not None else 1


@dataclass(frozen=True)
class ServeConfig:
    """What ``qkms serve``'s processes take from the environment beyond ``Settings``."""

    workers: int = 1  # QKMS_DATA_PLANE_WORKERS: 1 to 64; auto or unset: one per core
    # QKMS_METRICS_TOKEN: a bearer token that may read /metrics/keys ("": none). A secret.
    metrics_token: str = field(default="", repr=False)
    # QKMS_WORKER_PARENT: set by the parent for each data-plane worker it starts (the
    # worker stops when that process is gone); None: the worker's parent process.
    worker_parent: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None,
                 cpus: int | None = None) -> ServeConfig:
        """``cpus``: how many cores ``auto`` means (``available_cores()`` when None)."""
        env = os.environ if env is None else env
        return cls(workers=data_plane_workers(env, cpus),
                   metrics_token=env.get("QKMS_METRICS_TOKEN", "").strip(),
                   worker_parent=_integer(env, "QKMS_WORKER_PARENT"))


DEFAULT_URL = "https://qkms.qkms-system:8443"


@dataclass(frozen=True)
class ClientConfig:
    """What a workload's client (``qkms.client``, ``qkms call``) takes from its environment.
    An empty file variable is an unset one."""

    url: str = DEFAULT_URL  # QKMS_URL: the data plane
    token: str | None = field(default=None, repr=False)  # QKMS_TOKEN: a bearer token
    token_file: Path | None = None  # QKMS_TOKEN_FILE: else the projected token
    ca_file: Path | None = None  # QKMS_CA_FILE: else the projected qkms-ca bundle

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ClientConfig:
        env = os.environ if env is None else env
        return cls(url=env.get("QKMS_URL", DEFAULT_URL), token=env.get("QKMS_TOKEN") or None,
                   token_file=Path(env["QKMS_TOKEN_FILE"]) if env.get("QKMS_TOKEN_FILE")
                   else None,
                   ca_file=Path(env["QKMS_CA_FILE"]) if env.get("QKMS_CA_FILE") else None)


@dataclass(frozen=True)
class CommandConfig:
    """What single commands read beyond ``Settings``, as given: ``qkms audit`` works on a
    folder of chains, so it neither validates the environment's name nor needs a store."""

    data_dir: Path | None = None  # QKMS_DATA_DIR; None: unset (the audit commands ask)
    environment: str | None = None  # QKMS_ENVIRONMENT, lower-cased; not checked here
    # QKMS_IMPORT_PASSWORD: the password of a PEM ``qkms keys import --pem`` reads.
    import_password: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CommandConfig:
        env = os.environ if env is None else env
        environment = env.get("QKMS_ENVIRONMENT", "").strip().lower()
        return cls(data_dir=Path(env["QKMS_DATA_DIR"]) if env.get("QKMS_DATA_DIR") else None,
                   environment=environment or None,
                   import_password=env.get("QKMS_IMPORT_PASSWORD") or None)


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


def _seconds(env: Mapping[str, str], name: str, default: float, *, zero: bool = False) -> float:
    """A number of seconds: positive (an interval: zero would spin), or ``zero`` allowed."""
    if name not in env:
        return default
    try:
        value = float(env[name])
    except ValueError:
        raise InvalidInputError(name, f"{env[name]!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise InvalidInputError(name, f"{env[name]!r}: must be a finite number of seconds "
                                      f"{'>= 0' if zero else '> 0'}")
    return value


def _integer(env: Mapping[str, str], name: str) -> int | None:
    text = env.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise InvalidInputError(name, f"{text!r} is not an integer") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


@dataclass(frozen=True)
class OperatorConfig:
    """What the Kubernetes operator (qkms/k8s/) takes from its environment, beyond
    ``Settings``: read once, by ``from_env``, and handed on through Kopf's ``memo``.
    Not called OperatorSettings: Kopf's own ``kopf.OperatorSettings`` sits beside it in
    the startup handler."""

    namespace: str = "qkms-system"  # QKMS_NAMESPACE: the operator's own (Secrets, pins)
    state: str = "secrets"  # QKMS_STATE: records in Secrets there, or "files" in data_dir
    data_dir: Path = Path("/tmp/qkms")  # noqa: S108 - QKMS_DATA_DIR; unset: a cache only
    watch_namespaces: tuple[str, ...] = ()  # QKMS_WATCH_NAMESPACES, comma-separated; (): all
    peering_priority: int | None = None  # QKMS_PEERING_PRIORITY; None: a random one
    peering_lifetime: int = 60  # QKMS_PEERING_LIFETIME: how long a dead peer blocks
    announce_seconds: float = 3.0  # QKMS_ANNOUNCE_SECONDS: audit entries -> Events
    event_replay_seconds: float = 600.0  # QKMS_EVENT_REPLAY_SECONDS: how far back at start
    intent_sweep_seconds: float = 30.0  # QKMS_INTENT_SWEEP_SECONDS
    anchor_seconds: float = 5.0  # QKMS_ANCHOR_SECONDS: audit anchors published at most
    issuer_retry_seconds: float = 5.0  # QKMS_ISSUER_RETRY_SECONDS: an issuer not ready
    backup_interval_seconds: float = 86400.0  # QKMS_BACKUP_INTERVAL_SECONDS
    backup_delay_seconds: float = 300.0  # QKMS_BACKUP_DELAY_SECONDS: the first, after start
    api_listen: str = "0.0.0.0:8443"  # noqa: S104 - QKMS_API_LISTEN, in a pod; "": none
    audiences: tuple[str, ...] = ("qkms",)  # QKMS_AUDIENCES: tokens must be minted for
    auth_cache_seconds: float = 10.0  # QKMS_AUTH_CACHE_SECONDS: token reviews kept
    tls: str = "auto"  # QKMS_TLS: auto (qkms's own CA) | off; unset: off on loopback only
    tls_cert: Path | None = None  # QKMS_TLS_CERT and QKMS_TLS_KEY: files (cert-manager's)
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # QKMS_TLS_CLIENT_CA: mutual TLS
    # QKMS_METRICS_TOKEN: a bearer token that may read /metrics/keys ("": none). A secret.
    metrics_token: str = field(default="", repr=False)
    # QKMS_DATA_PLANE_WORKERS: data-plane processes of this replica (k8s/dataplane.py);
    # auto: one per core of the container's CPU limit (``pod_cores``); 1: the operator's.
    workers: int = 1
    worker_parent: int | None = None  # QKMS_WORKER_PARENT: as ServeConfig's

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None,
                 cpus: int | None = None) -> OperatorConfig:
        env = dict(os.environ if env is None else env)
        defaults = cls()
        state = env.get("QKMS_STATE", defaults.state).strip()
        if state not in ("secrets", "files"):
            raise InvalidInputError("QKMS_STATE", f"{state!r} is not one of secrets, files")
        lifetime = _integer(env, "QKMS_PEERING_LIFETIME")
        if lifetime is not None and lifetime < 1:
            raise InvalidInputError("QKMS_PEERING_LIFETIME", "must be at least 1 second")
        listen = env.get("QKMS_API_LISTEN", defaults.api_listen).strip()
        cert, key, client_ca = (env.get(name, "").strip() or None for name in (
            "QKMS_TLS_CERT", "QKMS_TLS_KEY", "QKMS_TLS_CLIENT_CA"))
        if cert and not key:
            raise InvalidInputError("QKMS_TLS_KEY", "must name the key file of QKMS_TLS_CERT")
        tls = env.get("QKMS_TLS", "").strip().lower() or \
            ("off" if listens_on_loopback(listen) else "auto")
        if tls not in ("auto", "off"):
            raise InvalidInputError("QKMS_TLS", f"{tls!r}: auto or off")
        if listen and not cert and tls == "off" and not listens_on_loopback(listen):
            raise InvalidInputError("QKMS_TLS", f"plain HTTP only on loopback, not on "
                                                f"{listen}: use auto or certificate files")
        audiences = _names(env.get("QKMS_AUDIENCES", ",".join(defaults.audiences)))
        if not audiences:
            raise InvalidInputError("QKMS_AUDIENCES", "names no audience")
        return cls(
            namespace=env.get("QKMS_NAMESPACE", defaults.namespace).strip() or
            defaults.namespace,
            state=state,
            data_dir=Path(env["QKMS_DATA_DIR"]) if "QKMS_DATA_DIR" in env else
            defaults.data_dir,
            watch_namespaces=_names(env.get("QKMS_WATCH_NAMESPACES", "")),
            peering_priority=_integer(env, "QKMS_PEERING_PRIORITY"),
            peering_lifetime=defaults.peering_lifetime if lifetime is None else lifetime,
            announce_seconds=_seconds(env, "QKMS_ANNOUNCE_SECONDS", defaults.announce_seconds),
            event_replay_seconds=_seconds(env, "QKMS_EVENT_REPLAY_SECONDS",
                                          defaults.event_replay_seconds, zero=True),
            intent_sweep_seconds=_seconds(env, "QKMS_INTENT_SWEEP_SECONDS",
                                          defaults.intent_sweep_seconds),
            anchor_seconds=_seconds(env, "QKMS_ANCHOR_SECONDS", defaults.anchor_seconds),
            issuer_retry_seconds=_seconds(env, "QKMS_ISSUER_RETRY_SECONDS",
                                          defaults.issuer_retry_seconds),
            backup_interval_seconds=_seconds(env, "QKMS_BACKUP_INTERVAL_SECONDS",
                                             defaults.backup_interval_seconds),
            backup_delay_seconds=_seconds(env, "QKMS_BACKUP_DELAY_SECONDS",
                                          defaults.backup_delay_seconds, zero=True),
            api_listen=listen,
            audiences=audiences,
            auth_cache_seconds=_seconds(env, "QKMS_AUTH_CACHE_SECONDS",
                                        defaults.auth_cache_seconds, zero=True),
            tls=tls,
            tls_cert=Path(cert) if cert else None,
            tls_key=Path(key) if cert and key else None,
            tls_client_ca=Path(client_ca) if client_ca else None,
            metrics_token=env.get("QKMS_METRICS_TOKEN", "").strip(),
            workers=data_plane_workers(env, pod_cores() if cpus is None else cpus),
            worker_parent=_integer(env, "QKMS_WORKER_PARENT"),
        )
