"""Every Kubernetes API call qkms makes, through the official client in a thread pool.

Handlers and the reconciler never talk to the API directly: they ask this
module for namespace labels and policies, and hand it statuses, projections
and Events to write.  Reads of namespaces and policies are cached for a few
seconds, because every ManagedKey reconcile needs them and they rarely change.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from qkms.errors import InvalidInputError
from qkms.model.names import AUDIT_PINS, GROUP, KEY_LABEL, MANAGED_BY_LABEL, VERSION
from qkms.model.policy import KeyPolicy, parse_key_policy

log = logging.getLogger("key-management:k8s")

TIMEOUT = 10  # seconds, for every API call
CACHE_SECONDS = 3.0
LIST_CHUNK = 500  # every list is paged (limit/continue): a big cluster is read in chunks


def list_pages(call: Any, *args: Any, **kwargs: Any) -> list[Any]:
    """Every item of a paged list (blocking: run it in a thread). `call` is a kubernetes
    client list method; its answer is a dict (custom objects) or a V1...List."""
    items: list[Any] = []
    token: str | None = None
    while True:
        page = call(*args, limit=LIST_CHUNK, _continue=token, _request_timeout=TIMEOUT,
                    **kwargs)
        if isinstance(page, dict):
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
        else:
            items.extend(page.items or [])
            token = page.metadata._continue if page.metadata else None
        if not token:
            return items


def load_client() -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig (KUBECONFIG)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def owner_reference(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": body.get("kind", "ManagedKey"),
            "name": meta["name"], "uid": meta["uid"], "controller": True,
            "blockOwnerDeletion": True}


def _projected_for(existing: Any, owner: Mapping[str, Any]) -> bool:
    """Whether an existing Secret/ConfigMap is this ManagedKey's projection (owned by it, or
    labelled for its name, as after a re-creation): a user's Secret or another key's projection
    is never replaced."""
    meta = owner["metadata"]
    if any(ref.uid == meta.get("uid") for ref in existing.metadata.owner_references or []):
        return True
    labels = existing.metadata.labels or {}
    return labels.get(MANAGED_BY_LABEL) == "qkms" and labels.get(KEY_LABEL) == meta["name"]


class Kube:
    def __init__(self, api: client.ApiClient | None = None, *,
                 namespaces: tuple[str, ...] = ()) -> None:
        """`namespaces`: the ones the operator serves (``OperatorConfig.watch_namespaces``,
        the chart's watchNamespaces); empty: every namespace."""
        self.api = api or load_client()
        self.namespaces = namespaces
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self._cache: dict[str, tuple[float, Any]] = {}
        self._loading: dict[str, asyncio.Future[Any]] = {}

    async def _call(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(func, *args, _request_timeout=TIMEOUT, **kwargs)

    async def _cached(self, key: str, load: Any) -> Any:
        """``load()``'s value for CACHE_SECONDS. Callers that miss together share one load:
        when the policies expire under 1,000 reconciles, the API sees one list, not 1,000."""
        hit = self._cache.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        pending = self._loading[key] = asyncio.ensure_future(load())
        try:
            value = await asyncio.shield(pending)
        finally:
            self._loading.pop(key, None)
        self._cache[key] = (time.monotonic() + CACHE_SECONDS, value)
        return value

    def forget_cache(self) -> None:
        self._cache.clear()

    # -- reads ---------------------------------------------------------------
    async def namespace_labels(self, namespace: str) -> dict[str, str]:
        async def load() -> dict[str, str]:
            ns = await self._call(self.core.read_namespace, namespace)
            return dict(ns.metadata.labels or {})
        return await self._cached(f"ns/{namespace}", load)

    async def key_policies(self) -> list[KeyPolicy]:
        async def load() -> list[KeyPolicy]:
            listing = await asyncio.to_thread(list_pages, self.custom.list_cluster_custom_object,
                                              GROUP, VERSION, "keypolicies")
            policies = []
            for item in listing:
                try:
                    policies.append(parse_key_policy(item))
                except InvalidInputError as exc:
                    log.warning("ignoring KeyPolicy %s: %s", item["metadata"]["name"], exc)
            return policies
        return await self._cached("keypolicies", load)

    async def secret_data(self, namespace: str, name: str) -> dict[str, str]:
        """A Secret's data, decoded (provider credentials); cached briefly like policies."""
        async def load() -> dict[str, str]:
            secret = await self._call(self.core.read_namespaced_secret, name, namespace)
            return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
        return await self._cached(f"secret/{namespace}/{name}", load)

    async def managed_key(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One ManagedKey as the API has it now, or None once it is gone."""
        try:
            return dict(await self._call(self.custom.get_namespaced_custom_object, GROUP,
                                         VERSION, namespace, "managedkeys", name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def secret_bytes(self, namespace: str, name: str) -> dict[str, bytes]:
        """A Secret's raw data (key material to import); LookupError when it is missing.
        Never cached: material should not outlive the import."""
        return (await self.import_secret(namespace, name))[1]

    async def import_secret(self, namespace: str, name: str
                            ) -> tuple[dict[str, str], dict[str, bytes]]:
        """A Secret's annotations (its ``qkms.io/import-allowed-for`` opt-in) and raw data,
        for ``spec.importFrom``; LookupError when it is missing.  Never cached."""
        try:
            secret = await self._call(self.core.read_namespaced_secret, name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                raise LookupError(f"{namespace}/{name}") from None
            raise
        annotations = dict((secret.metadata.annotations if secret.metadata else None) or {})
        return annotations, {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}

    async def managed_keys(self) -> list[dict[str, Any]]:
        """Every ManagedKey the operator serves: cluster-wide, or in each watched namespace
        (where alone its Roles allow it to list)."""
        if not self.namespaces:
            return await asyncio.to_thread(list_pages, self.custom.list_cluster_custom_object,
                                           GROUP, VERSION, "managedkeys")
        keys: list[dict[str, Any]] = []
        for namespace in self.namespaces:
            keys += await asyncio.to_thread(list_pages,
                                            self.custom.list_namespaced_custom_object,
                                            GROUP, VERSION, namespace, "managedkeys")
        return keys

    # -- writes --------------------------------------------------------------
    async def patch_managed_key(self, namespace: str, name: str, patch: dict[str, Any],
                                *, status: bool = False) -> None:
        func = (self.custom.patch_namespaced_custom_object_status if status
                else self.custom.patch_namespaced_custom_object)
        await self._call(func, GROUP, VERSION, namespace, "managedkeys", name, patch)

    async def apply_projection(self, owner: Mapping[str, Any], kind: str, name: str,
                               data: Mapping[str, str]) -> bool:
        """Create or repair a projected Secret/ConfigMap; returns whether it wrote."""
        namespace = owner["metadata"]["namespace"]
        labels = {MANAGED_BY_LABEL: "qkms", KEY_LABEL: owner["metadata"]["name"]}
        encoded = ({k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
                   if kind == "Secret" else dict(data))
        body: dict[str, Any] = {
            "apiVersion": "v1", "kind": kind,
            "metadata": {"name": name, "namespace": namespace, "labels": labels,
                         "ownerReferences": [owner_reference(owner)]},
            "data": encoded,
        }
        if kind == "Secret":
            body["type"] = "Opaque"
        read, create, replace = (
            (self.core.read_namespaced_secret, self.core.create_namespaced_secret,
             self.core.replace_namespaced_secret) if kind == "Secret" else
            (self.core.read_namespaced_config_map, self.core.create_namespaced_config_map,
             self.core.replace_namespaced_config_map))
        try:
            existing = await self._call(read, name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            try:
                await self._call(create, namespace, body)
                return True
            except ApiException as exc:
                if exc.status != 409:
                    raise
                existing = await self._call(read, name, namespace)  # someone was faster
        if not _projected_for(existing, owner):
            field = "secretName" if kind == "Secret" else "configMapName"
            raise InvalidInputError(
                f"spec.projection.{field}", f"{kind} {name} already exists and is not this "
                "ManagedKey's projection; qkms does not overwrite it")
        current_labels = existing.metadata.labels or {}
        if (existing.data or {}) == encoded and all(current_labels.get(k) == v
                                                    for k, v in labels.items()):
            return False
        body["metadata"]["resourceVersion"] = existing.metadata.resource_version
        await self._call(replace, name, namespace, body)
        return True

    async def pin_audit_key(self, namespace: str, environment: str, public_key: bytes) -> str:
        """Write an environment's checkpoint key into the ConfigMap ``AUDIT_PINS`` once.

        Returns ``"pinned"`` (written now), ``"same"`` (already there), or ``"mismatch"``: a
        different key is pinned, and it is never overwritten (a verifier must notice)."""
        value = base64.b64encode(public_key).decode()
        read, create, replace = (self.core.read_namespaced_config_map,
                                 self.core.create_namespaced_config_map,
                                 self.core.replace_namespaced_config_map)
        for _ in range(5):  # another replica may pin another environment meanwhile
            try:
                existing = await self._call(read, AUDIT_PINS, namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                body = {"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": AUDIT_PINS, "namespace": namespace},
                        "data": {environment: value}}
                try:
                    await self._call(create, namespace, body)
                    return "pinned"
                except ApiException as conflict:
                    if conflict.status != 409:
                        raise
                    continue
            data = dict(existing.data or {})
            if environment in data:
                return "same" if data[environment] == value else "mismatch"
            data[environment] = value
            existing.data = data
            try:
                await self._call(replace, AUDIT_PINS, namespace, existing)
                return "pinned"
            except ApiException as conflict:
                if conflict.status != 409:
                    raise
        raise OSError(f"ConfigMap {namespace}/{AUDIT_PINS} kept changing under the pin")

    async def post_event(self, owner: Mapping[str, Any], type_: str, reason: str,
                         message: str, annotations: Mapping[str, str] | None = None, *,
                         name: str | None = None, strict: bool = False) -> bool:
        """An Event on the ManagedKey; ``annotations`` carry the audit reference. With a
        ``name`` (one announced audit entry: k8s/announcer.py) an Event already posted is
        left as it is. Best effort (False when it could not be posted), unless ``strict``."""
        meta = owner["metadata"]
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        naming = {"name": name} if name else {"generateName": f"{meta['name']}."}
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {**naming, "namespace": meta["namespace"],
                         "annotations": dict(annotations or {})},
            "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ManagedKey",
                               "name": meta["name"], "namespace": meta["namespace"],
                               "uid": meta.get("uid")},
            "reason": reason, "message": message[:1024], "type": type_,
            "source": {"component": "qkms"}, "reportingComponent": "qkms",
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            await self._call(self.core.create_namespaced_event, meta["namespace"], body)
        except ApiException as exc:  # an Event is best effort, never a reason to fail
            if exc.status == 409 and name:
                return True  # announced already
            if strict:
                raise
            log.warning("could not post Event %s: %s", reason, exc.reason)
            return False
        except Exception:
            if strict:
                raise
            log.warning("could not post Event %s: the Kubernetes API is unreachable", reason)
            return False
        return True
