"""Bring one ManagedKey's key in line with its spec and policy; report what to show.

The reconciler calls the service in a fixed order (create or adopt, one-shot
requests, schedule changes, time-driven work) and returns an ``Outcome``: the
status, the projection, the Events and when to look again.  It never touches
Kubernetes; the Kopf handlers and standalone mode apply the outcome.  Every
step is idempotent, so a retry after a crash at any point neither creates a
second key nor repeats a request (request IDs are stored with the key).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from qkms import lifecycle
from qkms.crypto.importing import from_secret_data
from qkms.errors import (
    EnvironmentMismatchError,
    InvalidInputError,
    ProviderUnavailableError,
    QkmsError,
    RotationFailedError,
)
from qkms.model.enums import VersionState
from qkms.model.keys import KeyRecord
from qkms.model.managed_key import DeletionPolicy, ManagedKey, ManagedKeyStatus
from qkms.model.names import IMPORT_ANNOTATION
from qkms.model.policy import KeyPolicy
from qkms.service import KeyManagementService

from . import decisions
from .registry import ServiceRegistry

log = logging.getLogger("key-management:reconcile")


@dataclass(frozen=True)
class KubeEvent:
    type: str  # Normal | Warning
    reason: str
    message: str
    audit_cid: str | None = None  # the entry it announces (k8s/announcer.py names it so)


@dataclass
class Outcome:
    status: ManagedKeyStatus
    projection: dict[str, str] | None = None
    events: list[KubeEvent] = field(default_factory=list)
    requeue_after: float | None = None
    retry: bool = False  # a retryable fault: the handler raises TemporaryError
    remove_annotations: list[str] = field(default_factory=list)
    record: KeyRecord | None = None


def _audit_ref(service: KeyManagementService, name: str) -> str:
    entry = service.last_audit_of(name)
    if entry is None:
        return ""
    return f" [audit #{entry.sequence}{' cid ' + entry.cid if entry.cid else ''}]"


# The service names its arguments; a refused resource names the field the user wrote.
SPEC_FIELDS = {"owner": "spec.owner", "usage": "spec.usage", "algorithm": "spec.algorithm",
               "rotation_schedule": "spec.rotationSchedule", "grace_period": "spec.gracePeriod",
               "reason": "spec.revoked.reason", "name": "metadata.name"}


def _spec_message(exc: InvalidInputError) -> str:
    field = SPEC_FIELDS.get(exc.field or "")
    return f"{field}: {exc.reason}" if field else exc.message


IMPORT_REFUSED = ("the Secret's data is not a key this ManagedKey can import: name the data "
                  "key with spec.importFrom.key (unless there is only one); it must hold a PEM "
                  "private key of spec.algorithm, or 32 raw bytes for a symmetric one")
SecretReader = Callable[[str, str], Awaitable[tuple[Mapping[str, str], dict[str, bytes]]]]


class KeyReconciler:
    def __init__(self, registry: ServiceRegistry, clock: Any = None,
                 credentials: Callable[[KeyPolicy | None],
                                       Awaitable[dict[str, str] | None]] | None = None,
                 secrets: SecretReader | None = None) -> None:
        """``credentials`` reads a policy's credentialsSecretRef and ``secrets`` a Secret's
        annotations and data for ``spec.importFrom`` (both the operator's Kube; absent in
        standalone mode)."""
        self.registry = registry
        self.clock = clock or (lambda: datetime.now(UTC))
        self.credentials = credentials
        self.secrets = secrets

    async def locate(self, mk: ManagedKey, namespace_labels: Mapping[str, str] | None,
                     policies: Sequence[KeyPolicy]) -> tuple[KeyManagementService,
                                                             KeyPolicy | None,
                                                             decisions.DesiredKey]:
        env = decisions.resolve_environment(mk, namespace_labels,
                                            self.registry.settings.environment
                                            if namespace_labels is None else None)
        policy = decisions.select_policy(mk, env, policies)
        desired = decisions.desired_key(mk, env, policy)
        credentials = await self.credentials(policy) if self.credentials else None
        return await self.registry.aget(env, policy, credentials), policy, desired

    async def reconcile(self, mk: ManagedKey, namespace_labels: Mapping[str, str] | None,
                        policies: Sequence[KeyPolicy]) -> Outcome:
        now = self.clock()
        try:
            service, policy, desired = await self.locate(mk, namespace_labels, policies)
        except EnvironmentMismatchError as exc:  # names spec.environment or spec.policyRef
            return self._refused(mk, "EnvironmentMismatch", f"{exc.field}: {exc.message}"
                                 if exc.field else exc.message, now)
        except InvalidInputError as exc:
            return self._refused(mk, "InvalidSpec", _spec_message(exc), now)
        except ProviderUnavailableError as exc:  # no service: its SDK is missing, say
            refused = self._refused(mk, "ProviderUnavailable", exc.message, now)
            return Outcome(refused.status, events=refused.events, retry=True,
                           requeue_after=30.0)
        events: list[KubeEvent] = []
        try:
            record = await self._ensure(service, mk, desired, events)
            record = await self._apply_requests(service, mk, record, events)
            record = await self._apply_schedule(service, desired, record)
            before = len(record.versions)
            await service.advance(desired.name)
            record = service.get_record(desired.name)
            if len(record.versions) > before:
                events.append(KubeEvent("Normal", "KeyRotated",
                                        f"scheduled rotation to {record.current.key_id}"
                                        f"{_audit_ref(service, desired.name)}"))
        except EnvironmentMismatchError as exc:
            return self._refused(mk, "EnvironmentMismatch", exc.message, now, events)
        except InvalidInputError as exc:
            return self._refused(mk, "InvalidSpec", _spec_message(exc), now, events)
        except (ProviderUnavailableError, RotationFailedError) as exc:
            retryable = isinstance(exc, ProviderUnavailableError) or getattr(exc, "retryable",
                                                                            False)
            reason = "ProviderUnavailable" if retryable else "RotationFailed"
            events.append(KubeEvent("Warning", reason, exc.message))
            current = service.record_of(desired.name)
            status = (decisions.build_status(mk, current, now, policy=policy,
                                             degraded=exc.message)
                      if current else decisions.failed_status(mk, reason, exc.message, now))
            return Outcome(status, events=events, retry=retryable, requeue_after=30.0)
        return self._outcome(service, mk, record, policy, events, now)

    def _outcome(self, service: KeyManagementService, mk: ManagedKey, record: KeyRecord,
                 policy: KeyPolicy | None, events: list[KubeEvent], now: datetime) -> Outcome:
        audit = service.last_audit_of(record.name)
        status = decisions.build_status(mk, record, now, policy=policy,
                                        audit_cid=audit.cid if audit else None)
        was_warned = any(c.type == "PQCMigration" and c.status == "True"
                         for c in mk.status.conditions)
        if decisions.pqc_deadline_near(record, policy, now) and not was_warned:
            events.append(KubeEvent("Warning", "PQCMigration",
                                    f"{record.algorithm} is quantum-vulnerable; migrate before "
                                    "the policy's migrationDeadline"))
        projection = None
        if mk.spec.projection is not None:
            pem = service.public_pem(lifecycle.active_version(record) or record.current)
            projection = decisions.projection_data(record, mk.spec.projection.formats,
                                                   service.jwks(record.name), pem)
        annotations = mk.metadata.get("annotations") or {}
        remove = ([decisions.ROTATE_ANNOTATION, decisions.ROTATE_ID_ANNOTATION]
                  if decisions.ROTATE_ANNOTATION in annotations else [])
        return Outcome(status, projection, events, decisions.requeue_after(record, now),
                       remove_annotations=remove, record=record)

    def _refused(self, mk: ManagedKey, reason: str, message: str, now: datetime,
                 events: list[KubeEvent] | None = None) -> Outcome:
        log.warning("refused %s/%s: %s", mk.namespace, mk.name, message)
        return Outcome(decisions.failed_status(mk, reason, message, now),
                       events=[*(events or []), KubeEvent("Warning", reason, message)])

    async def _ensure(self, service: KeyManagementService, mk: ManagedKey,
                      desired: decisions.DesiredKey, events: list[KubeEvent]) -> KeyRecord:
        """Create the key, or adopt the one a previous attempt (or resource) created."""
        # The catalog is read whole when the service starts, and only the active replica
        # creates keys, so the cached view is the truth here: no read per new key.
        record = service.record_of(desired.name)
        if record is not None:
            return record
        common: dict[str, Any] = {
            "name": desired.name, "usage": desired.usage, "owner": desired.owner,
            "rotation_schedule": desired.rotation_schedule, "grace_period": desired.grace_period,
            "labels": {"uid": str(mk.metadata.get("uid", ""))},
            "actor": {"type": "OPERATOR", "id": "qkms"}}
        source = mk.spec.import_from
        if source is None:
            meta = await service.create_key(algorithm=desired.algorithm, **common)
        else:  # bring your own key: the material comes from a Secret that allows it
            data = await self._secret(mk.namespace or "default", source.secret_name,
                                      mk.name or "")
            # A refusal says nothing about what the Secret holds (its data keys, their kind).
            try:
                algorithm, private = from_secret_data(data, source.key, mk.spec.algorithm)
            except InvalidInputError:
                raise InvalidInputError("spec.importFrom", IMPORT_REFUSED) from None
            finally:
                del data
            try:
                meta = await service.import_key(private=private, algorithm=algorithm, **common)
            except InvalidInputError as exc:
                if exc.field not in ("private", "algorithm"):
                    raise
                raise InvalidInputError("spec.importFrom", IMPORT_REFUSED) from None
        verb = "created" if source is None else f"imported from Secret {source.secret_name} as"
        entry = service.last_audit_of(desired.name)
        events.append(KubeEvent("Normal", "KeyCreated",
                                f"{verb} {meta.key_id} ({meta.algorithm}) in "
                                f"{meta.provider.value}{_audit_ref(service, desired.name)}",
                                audit_cid=entry.cid if entry else None))
        return service.get_record(desired.name)

    async def _secret(self, namespace: str, name: str, importer: str) -> dict[str, bytes]:
        """The Secret's data, only if the Secret opts in: its annotation
        ``qkms.io/import-allowed-for`` names this ManagedKey.  Anyone who may create a
        ManagedKey must not be able to turn any Secret of the namespace into a key.  A
        missing Secret and one that does not allow it are refused alike, without a word
        about what it holds."""
        if self.secrets is None:
            raise InvalidInputError("spec.importFrom", "needs the operator: standalone mode "
                                                       "reads no Secrets")
        refused = InvalidInputError(
            "spec.importFrom.secretName",
            f"Secret {namespace}/{name} does not exist or does not allow this import: it "
            f"needs the annotation {IMPORT_ANNOTATION}: {importer}")
        try:
            annotations, data = await self.secrets(namespace, name)
        except LookupError:
            raise refused from None
        allowed = {n.strip() for n in str(annotations.get(IMPORT_ANNOTATION, "")).split(",")}
        if not importer or importer not in allowed:
            raise refused
        return data

    async def _apply_requests(self, service: KeyManagementService, mk: ManagedKey,
                              record: KeyRecord, events: list[KubeEvent]) -> KeyRecord:
        actor = {"type": "OPERATOR", "id": f"{mk.namespace}/{mk.name}"}
        for request in decisions.pending_requests(mk, record):
            if request.kind == "revoke":
                await service.revoke_key(record.name, request.reason, actor=actor,
                                         request_id=request.request_id)
                events.append(KubeEvent("Warning", "KeyRevoked",
                                        f"revoked: {request.reason}"
                                        f"{_audit_ref(service, record.name)}"))
                continue
            result = await service.rotate_key(record.name, reason=request.reason,
                                              algorithm=request.algorithm, actor=actor,
                                              request_id=request.request_id)
            kind = "KeyMigrated" if request.kind == "migrate" else "KeyRotated"
            events.append(KubeEvent(
                "Warning" if request.reason == "COMPROMISE" else "Normal", kind,
                f"{result.old_key_id} -> {result.new_key_id} ({result.reason}, old version "
                f"{result.old_state}){_audit_ref(service, record.name)}"))
        return service.get_record(record.name)

    async def _apply_schedule(self, service: KeyManagementService,
                              desired: decisions.DesiredKey, record: KeyRecord) -> KeyRecord:
        if (record.rotation_schedule, record.grace_period) == (desired.rotation_schedule,
                                                               desired.grace_period):
            return record
        return await service.update_schedule(record.name, desired.rotation_schedule,
                                             desired.grace_period)

    async def delete(self, mk: ManagedKey, namespace_labels: Mapping[str, str] | None,
                     policies: Sequence[KeyPolicy]) -> str:
        """Finalizer work: Retain audits the release, Delete schedules destruction."""
        try:
            service, policy, desired = await self.locate(mk, namespace_labels, policies)
        except QkmsError as exc:
            return f"nothing to clean up: {exc.message}"
        record = service.record_of(desired.name)
        if record is None:
            return "no key was created"
        if mk.spec.deletion_policy is DeletionPolicy.DELETE:
            if lifecycle.key_state(record) in (VersionState.PENDING_DELETION,
                                               VersionState.DESTROYED):
                return "deletion already scheduled"
            window = policy.spec.deletion_window if policy else lifecycle.DEFAULT_DELETION_WINDOW
            await service.schedule_key_deletion(record.name, window,
                                                actor={"type": "OPERATOR", "id": "qkms"})
            return f"deletion scheduled after {window}"
        await service.release_key(record.name, actor={"type": "OPERATOR", "id": "qkms"})
        return "key retained in the provider (deletionPolicy Retain)"
