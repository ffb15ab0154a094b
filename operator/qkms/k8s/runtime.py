"""The operator's state and how a reconcile outcome reaches the cluster.

One ``OperatorRuntime`` lives for the operator's lifetime, on Kopf's ``memo``.  It
resolves what a ManagedKey needs (namespace labels, policies), runs the shared reconciler,
and applies the outcome: status, annotation clean-up, projections, Events.
It remembers each key's desired projection so that drift (an edited or
deleted Secret/ConfigMap) is repaired without another reconcile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from qkms.config import OperatorConfig, Settings
from qkms.errors import InvalidInputError
from qkms.model.enums import Environment
from qkms.model.managed_key import ManagedKey, ManagedKeyStatus, parse_managed_key
from qkms.model.names import AUDIT_ANNOTATION
from qkms.model.policy import KeyPolicy
from qkms.reconcile import decisions
from qkms.reconcile.reconciler import KeyReconciler, KubeEvent, Outcome
from qkms.reconcile.registry import ServiceRegistry
from qkms.service import KeyManagementService

from .announcer import Announcer, event_name
from .kube_api import Kube
from .secret_store import SecretRecordStore, load_or_create_kek_secret

log = logging.getLogger("key-management:operator")


def runtime_of(memo: Any) -> OperatorRuntime:
    """The process's one runtime, which ``handlers.startup`` put on Kopf's ``memo`` (Kopf
    hands every handler, daemon and timer a copy of that memo)."""
    runtime: OperatorRuntime = memo.runtime
    return runtime


@dataclass
class IssuerMemory:
    """What the cert-manager issuer (issuers.py, issuer_refresh.py) remembers between handler
    calls in this process; it lives on the runtime, and so on Kopf's memo."""

    locks: dict[Any, asyncio.Lock] = field(default_factory=dict)  # per issuer
    issuers_of_key: dict[str, set[Any]] = field(default_factory=dict)  # "ns/name" -> issuers
    key_seen: dict[str, str] = field(default_factory=dict)  # the key status last acted on
    timers: dict[Any, asyncio.Task[None]] = field(default_factory=dict)  # CRL refreshes
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)  # kept referenced until done
    request_locks: dict[str, asyncio.Lock] = field(default_factory=dict)  # per request uid
    done: set[str] = field(default_factory=set)  # request uids signed or refused here
    revoked: set[str] = field(default_factory=set)  # request uids recorded as revoked


@dataclass(frozen=True)
class ProjectionTarget:
    namespace: str
    kind: str  # Secret | ConfigMap
    name: str


class OperatorRuntime:
    def __init__(self, settings: Settings, kube: Kube, *, namespace: str,
                 state: str = "secrets", config: OperatorConfig | None = None) -> None:
        self.kube = kube
        self.namespace = namespace
        self.config = config or OperatorConfig(namespace=namespace, state=state)
        kek = None
        records = None
        if state == "secrets":
            kek = load_or_create_kek_secret(kube.core, namespace)
            stores: dict[Environment, SecretRecordStore] = {}

            def records(env: Environment) -> SecretRecordStore:
                # One mirror (and its watch) per environment, kept when its service is
                # rebuilt for a policy change.
                if env not in stores:
                    stores[env] = SecretRecordStore(kube.core, namespace, env.value)
                return stores[env]
        self.registry = ServiceRegistry(settings, records=records, kek=kek)
        self.reconciler = KeyReconciler(self.registry, credentials=self.credentials,
                                        secrets=kube.import_secret)
        self.locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.wakers: dict[tuple[str, str], asyncio.Event] = {}
        self.projections: dict[ProjectionTarget, tuple[dict[str, Any], dict[str, str]]] = {}
        self.ca_pem: bytes | None = None  # the data plane's own CA (QKMS_TLS=auto)
        self.ca_published: set[str] = set()
        self.pinned: dict[str, bytes] = {}  # environment -> checkpoint key pinned
        self.issuers = IssuerMemory()
        self.announcer = Announcer(kube, timedelta(seconds=self.config.event_replay_seconds),
                                   datetime.now(UTC))

    @classmethod
    def from_env(cls, config: OperatorConfig, kube: Kube | None = None) -> OperatorRuntime:
        """The key service's ``Settings`` from the environment, its data dir the
        operator's (``QKMS_DATA_DIR``, else a cache under /tmp), and `config`'s namespaces."""
        settings = replace(Settings.from_env(), data_dir=config.data_dir)
        return cls(settings, kube or Kube(namespaces=config.watch_namespaces),
                   namespace=config.namespace, state=config.state, config=config)

    async def publish_ca(self, namespace: str) -> None:
        """The ConfigMap qkms-ca (the data plane's CA) in `namespace`, once per run."""
        if self.ca_pem is None or namespace in self.ca_published:
            return
        from . import tls

        try:
            await asyncio.to_thread(tls.publish_ca, self.kube.core, namespace, self.ca_pem)
            self.ca_published.add(namespace)
        except Exception as exc:  # best effort: the next reconcile tries again
            log.warning("could not publish the data plane's CA in %s: %s", namespace,
                        getattr(exc, "reason", type(exc).__name__))

    def _lock(self, key: tuple[str, str]) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())

    async def reconcile(self, body: Mapping[str, Any], *, fresh: bool = False) -> Outcome:
        """Reconcile one ManagedKey body and apply the outcome; serialized per key.

        ``fresh`` re-reads the body under the key's lock: a caller holding a body listed
        earlier (a KeyPolicy re-plan walks every key) must not apply an older spec over a
        change the key's own handler applied meanwhile. A key gone by then is left alone.
        """
        meta = body["metadata"]
        ident = (meta["namespace"], meta["name"])
        async with self._lock(ident):
            if fresh:
                latest = await self.kube.managed_key(*ident)
                if latest is None:
                    return Outcome(ManagedKeyStatus())
                body = latest
            try:
                mk = parse_managed_key(body)
            except InvalidInputError as exc:
                outcome = self.reconciler._refused(_shell(body), "InvalidSpec", str(exc),
                                                   self.reconciler.clock())
                await self.apply(body, outcome)
                return outcome
            labels = await self.kube.namespace_labels(ident[0])
            policies = await self.kube.key_policies()
            outcome = await self.reconciler.reconcile(mk, labels, policies)
            outcome = await self.apply(body, outcome)
        await self.pin_audit_keys()
        waker = self.wakers.get(ident)
        if waker is not None:
            waker.set()
        return outcome

    async def pin_audit_keys(self) -> None:
        """Pin each environment's checkpoint key in a ConfigMap, once, so that ``qkms audit
        verify --public-key`` has a pin the audit volume's writer cannot change. A
        different key already pinned is never overwritten: it is logged as an error."""
        for service in self.registry.all():
            environment = service.environment.value
            public = service.audit_public_key()
            if public is None or self.pinned.get(environment) == public:
                continue
            try:
                result = await self.kube.pin_audit_key(self.namespace, environment, public)
            except Exception as exc:  # the pin is retried after the next reconcile
                log.warning("could not pin the %s audit checkpoint key: %s", environment, exc)
                continue
            if result == "mismatch":
                log.error("the %s audit checkpoint key differs from the one pinned in "
                          "ConfigMap %s/qkms-audit-pins: the audit log may have been "
                          "rebuilt; the pin is kept", environment, self.namespace)
            self.pinned[environment] = public

    def next_delay(self, ident: tuple[str, str]) -> float:
        """Seconds until the key of (namespace, name) next needs attention."""
        for service in self.registry.all():
            record = service.record_of(f"{ident[0]}/{ident[1]}")
            if record is not None:
                return decisions.requeue_after(record, self.reconciler.clock())
        return 30.0

    async def apply(self, body: Mapping[str, Any], outcome: Outcome) -> Outcome:
        """Write the projections, the status and the Events; a projection that would
        replace an object qkms does not own turns the outcome into a refusal naming it."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        await self.publish_ca(namespace)  # workloads here trust the data plane through it
        if outcome.projection is not None:  # the spec parsed: a mapping, as is its projection
            projected = outcome.projection
            projection = body["spec"].get("projection") or {}
            for kind, field in (("Secret", "secretName"), ("ConfigMap", "configMapName")):
                if projection.get(field):
                    target = ProjectionTarget(namespace, kind, projection[field])
                    try:
                        await self.kube.apply_projection(body, kind, target.name, projected)
                    except InvalidInputError as exc:
                        outcome = self._projection_refused(body, outcome, exc.message)
                        break
                    self.projections[target] = (dict(body), projected)
        # Dump with None kept: a merge patch with null clears a field (nextRotation, say).
        status = outcome.status.model_dump(mode="json", by_alias=True)
        await self.kube.patch_managed_key(namespace, name, {"status": status}, status=True)
        if outcome.remove_annotations:
            await self.kube.patch_managed_key(
                namespace, name,
                {"metadata": {"annotations": dict.fromkeys(outcome.remove_annotations)}})
        for event in outcome.events:
            await self.post(body, event, outcome)
        return outcome

    def _projection_refused(self, body: Mapping[str, Any], outcome: Outcome,
                            message: str) -> Outcome:
        """The key stays as made (its status shows it); Ready turns False naming the field."""
        shell = ManagedKey.model_construct(metadata=dict(body["metadata"]), spec=None,
                                           status=outcome.status)
        refused = self.reconciler._refused(shell, "InvalidSpec", message,
                                           self.reconciler.clock(), outcome.events)
        return Outcome(refused.status, events=refused.events)

    async def post(self, body: Mapping[str, Any], event: KubeEvent,
                   outcome: Outcome | None = None) -> None:
        cid = event.audit_cid or (outcome.status.last_audit_cid if outcome else None)
        annotations = {AUDIT_ANNOTATION: cid} if cid else {}
        name = (event_name(body["metadata"]["name"], event.reason, event.audit_cid)
                if event.audit_cid else None)
        if await self.kube.post_event(body, event.type, event.reason, event.message,
                                      annotations, name=name):
            self.announcer.announced(event.audit_cid)

    async def repair(self, target: ProjectionTarget) -> bool:
        """Restore a projected object someone edited or deleted; returns whether it wrote."""
        known = self.projections.get(target)
        if known is None:
            return False
        owner, data = known
        try:
            wrote = await self.kube.apply_projection(owner, target.kind, target.name, data)
        except InvalidInputError as exc:  # replaced by an object qkms does not own
            log.warning("not repairing %s %s/%s: %s", target.kind, target.namespace,
                        target.name, exc)
            return False
        if wrote:
            log.info("repaired drift in %s %s/%s", target.kind, target.namespace, target.name)
        return wrote

    async def delete(self, body: Mapping[str, Any]) -> str:
        meta = body["metadata"]
        try:
            mk = parse_managed_key(body)
        except InvalidInputError:
            return "the spec was invalid, so no key was created"
        labels = await self.kube.namespace_labels(meta["namespace"])
        message = await self.reconciler.delete(mk, labels, await self.kube.key_policies())
        for kind in ("Secret", "ConfigMap"):
            self.projections.pop(ProjectionTarget(meta["namespace"], kind, ""), None)
        await self.post(body, KubeEvent("Normal", "KeyDeleted", message))
        return message

    # -- KeyDirectory, for the data plane ---------------------------------------
    async def environment(self, namespace: str) -> Environment | None:
        try:
            labels = await self.kube.namespace_labels(namespace)
        except Exception:  # an unknown namespace has no environment
            return None
        value = labels.get(decisions.ENVIRONMENT_LABEL)
        if value is None or value not in Environment._value2member_map_:
            return None
        return Environment(value)

    async def service(self, environment: Environment) -> KeyManagementService:
        policies = await self.kube.key_policies()
        policy = next((p for p in policies if p.spec.environment is environment), None)
        return await self.registry.aget(environment, policy, await self.credentials(policy))

    async def credentials(self, policy: KeyPolicy | None) -> dict[str, str] | None:
        """The provider credentials a policy names by Secret reference (never inline)."""
        ref = policy.spec.provider.credentials_secret_ref if policy else None
        if ref is None:
            return None
        return await self.kube.secret_data(ref.namespace or self.namespace, ref.name)

    async def keys_under_policy(self, environment: Environment) -> list[dict[str, Any]]:
        bodies = []
        for item in await self.kube.managed_keys():
            labels = await self.kube.namespace_labels(item["metadata"]["namespace"])
            if labels.get(decisions.ENVIRONMENT_LABEL) == environment.value:
                bodies.append(item)
        return bodies


def _shell(body: Mapping[str, Any]) -> ManagedKey:
    """A minimal ManagedKey for reporting on a body whose spec does not parse."""
    meta = dict(body.get("metadata") or {})
    if type(meta.get("generation")) is not int:  # only an integer can be observedGeneration
        meta.pop("generation", None)
    return ManagedKey.model_construct(metadata=meta, spec=None, status=ManagedKeyStatus())
