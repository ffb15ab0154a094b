"""A Kubernetes API server for tests: kmock's emulator with the gaps Kopf hits filled in.

DESIGN.md ("Real systems in tests") asks for the real Kopf and client code talking HTTP to a
stateful API on loopback. kmock 0.8's ``KubernetesEmulator`` stores objects and streams
watch-events, but a real operator needs more, so :class:`QkmsEmulator` moves every write into
its own ``_serve_*`` fallbacks (the subclassing route kmock's author suggests, nolar/kmock#24)
and adds what real Kopf and the kubernetes client rely on:

* ``metadata.generateName`` (Kopf's Events use it), ``uid``, ``creationTimestamp``,
  ``generation``, and a cluster-wide ``resourceVersion`` bumped on every write;
* optimistic concurrency: 409 for a stale ``resourceVersion`` in a merge-patch, PUT or delete
  preconditions, 422 for a failed JSON-patch ``test`` op (Kopf's finalizer patch relies on it);
* merge-patch (RFC 7386), JSON-patch, PUT; a ``status`` subresource that only changes
  ``status`` while the main endpoint ignores it; no-op writes keep the resourceVersion;
* DELETE with finalizers: ``deletionTimestamp`` is set, the object stays until the last
  finalizer goes, and no new finalizers may be added meanwhile; namespaces terminate after
  their contents; dependents whose owners (``ownerReferences``) are all gone are deleted;
* list/watch with label and field selectors, ``limit``/``continue``, watch from a
  resourceVersion (410 Gone once it is older than the kept event log), bookmarks,
  ``sendInitialEvents``, and ``timeoutSeconds``;
* ``/api/v1/namespaces[/NAME]`` paths, which kmock mis-parses (a 500 on listing);
* discovery of CRDs: the qkms and Kopf peering resources are declared up front, and any
  CRD that is created (e.g. ``crds/*.yaml``, loaded at start) is added to discovery;
* ``GET /_emulator/watches`` (not a Kubernetes path): the open watch-streams, so a test can
  wait until an operator really watches something (Kopf's liveness probe answers earlier);
* state kept across restarts: objects, the resourceVersion and the newest watch-events go to
  a JSON file on shutdown and every 0.2 s when dirty, so watches resume after a restart.

Run it in its own process with ``python -m tests.support.kube --port N --state FILE`` so it
outlives operator restarts and can itself be stopped and restarted; :func:`kube_api` does
that and returns a :class:`KubeAPI` with the URL, a kubeconfig, and small aiohttp helpers.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import copy
import ctypes
import inspect
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import attrs
import jsonpatch
import jsonpointer
import kmock
import yaml
from kmock._internal import parsing as _kmock_parsing  # private: see _parse_path() below

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"
Body = dict[str, Any]
T = TypeVar("T")

ALL_VERBS = frozenset({"create", "delete", "deletecollection", "get", "list", "patch", "update",
                       "watch"})
NAMESPACES = kmock.resource("", "v1", "namespaces")
SECRETS = kmock.resource("", "v1", "secrets")
CRDS = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
SERVER_FIELDS = ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp",
                 "deletionGracePeriodSeconds", "generation")
NAME_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the alphabet Kubernetes uses
WATCHES_PATH = "/_emulator/watches"  # not Kubernetes: the open watch-streams, for the harness


def declared_resources() -> dict[str, kmock.ResourceInfo]:
    """Resources served without posting CRDs: qkms's own and Kopf's peering ones.

    Posting a CRD in kmock does not add it to discovery; here it does, and a posted CRD
    replaces these declarations, so ``crds/*.yaml`` stays the source of truth.
    """
    def info(kind: str, namespaced: bool, short: Iterable[str] = (), sub: Iterable[str] = (),
             categories: Iterable[str] = ()) -> kmock.ResourceInfo:
        return kmock.ResourceInfo(kind=kind, singular=kind.lower(), namespaced=namespaced,
                                  verbs=ALL_VERBS, shortnames=set(short), subresources=set(sub),
                                  categories=set(categories))
    return {
        "qkms.io/v1alpha1/managedkeys": info("ManagedKey", True, ["mk"], ["status"], ["qkms"]),
        "qkms.io/v1alpha1/keypolicies": info("KeyPolicy", False, ["kp"], ["status"], ["qkms"]),
        "kopf.dev/v1/clusterkopfpeerings": info("ClusterKopfPeering", False),
        "kopf.dev/v1/kopfpeerings": info("KopfPeering", True),
        "authentication.k8s.io/v1/tokenreviews": info("TokenReview", False),
        "authorization.k8s.io/v1/subjectaccessreviews": info("SubjectAccessReview", False),
    }


# -- kmock's path parser reads /api/v1/namespaces/NAME as a namespace prefix: fix it. ----------

_kmock_parse_path = _kmock_parsing.parse_path


def _parse_path(path: str) -> _kmock_parsing.ParsedPath:
    """Parse ``/api/v1/namespaces[/NAME[/status|/finalize]]`` as the namespaces resource.

    kmock treats ``namespaces`` as the namespace prefix of a namespaced path, so listing
    namespaces fails with a 500 and fetching one matches no resource. Kopf lists them when
    serving namespace patterns, and operators read namespace labels.
    """
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and (
            len(parts) <= 4 or (len(parts) == 5 and parts[4] in ("status", "finalize"))):
        name = parts[3] if len(parts) > 3 else None
        subresource = parts[4] if len(parts) > 4 else None
        return _kmock_parsing.ParsedPath("", "v1", "namespaces", None, name, subresource)
    return _kmock_parse_path(path)


_kmock_parsing.parse_path = _parse_path


# -- small pure helpers ----------------------------------------------------------------------

def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(status: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    """A Kubernetes ``Status`` failure; clients map the code (Kopf: 409/422/404 classes)."""
    return kmock.KubernetesError(status=status, reason=reason, message=message,
                                 details=details or {"emulator": "qkms"})


def _api_version(resource: kmock.resource) -> str:
    return f"{resource.group}/{resource.version}" if resource.group else str(resource.version)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge-patch: dicts merge recursively, ``null`` deletes, the rest replaces.

    kmock's own merge refuses to replace a dict by a scalar; a real API server does not.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _split_selector(selector: str) -> list[str]:
    """Split a selector on the commas outside ``in (a,b)`` value sets."""
    parts, depth, current = [], 0, ""
    for char in selector:
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part.strip() for part in parts if part.strip()]


def label_matcher(selector: str) -> Callable[[Mapping[str, str]], bool]:
    """Compile a label selector (``=``, ``==``, ``!=``, ``in``, ``notin``, ``key``, ``!key``)."""
    checks: list[Callable[[Mapping[str, str]], bool]] = []
    for req in _split_selector(selector):
        if m := re.fullmatch(r"(\S+)\s+(in|notin)\s*\((.*)\)", req):
            key, op, values = m[1], m[2], {v.strip() for v in m[3].split(",")}
            checks.append(
                (lambda ls, k=key, vs=values: k in ls and ls[k] in vs) if op == "in" else
                (lambda ls, k=key, vs=values: k not in ls or ls[k] not in vs))
        elif m := re.fullmatch(r"([^\s=!]+)\s*(==|!=|=)\s*(\S*)", req):
            key, op, value = m[1], m[2], m[3]
            checks.append((lambda ls, k=key, v=value: ls.get(k) != v) if op == "!=" else
                          (lambda ls, k=key, v=value: ls.get(k) == v))
        elif m := re.fullmatch(r"!\s*([^\s=!(),]+)", req):
            checks.append(lambda ls, k=m[1]: k not in ls)
        elif re.fullmatch(r"[^\s=!(),]+", req):
            checks.append(lambda ls, k=req: k in ls)
        else:
            raise _error(400, "BadRequest", f"unable to parse requirement: {req!r}")
    return lambda labels: all(check(labels) for check in checks)


def field_matcher(selector: str) -> Callable[[Body], bool]:
    """Compile a field selector: ``a.b=v``, ``a.b==v``, ``a.b!=v`` on any dotted path."""
    checks: list[Callable[[Body], bool]] = []

    def lookup(body: Any, path: str) -> str:
        for part in path.split("."):
            body = body.get(part) if isinstance(body, dict) else None
        return "" if body is None else str(body)

    for req in _split_selector(selector):
        if not (m := re.fullmatch(r"([\w.]+)\s*(==|!=|=)\s*(.*)", req)):
            raise _error(400, "BadRequest", f"invalid field selector: {req!r}")
        path, op, value = m[1], m[2], m[3]
        checks.append((lambda b, p=path, v=value: lookup(b, p) != v) if op == "!=" else
                      (lambda b, p=path, v=value: lookup(b, p) == v))
    return lambda body: all(check(body) for check in checks)


def _without_rv(body: Body) -> Body:
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "resourceVersion"}
    return {**body, "metadata": meta}


def _spec_of(body: Body) -> Body:
    return {k: v for k, v in body.items() if k not in ("metadata", "status")}


def apply_schema(value: Any, schema: Mapping[str, Any]) -> Any:
    """Default and prune `value` by a CRD's structural schema, as the API server does.

    Missing fields with a ``default`` get it (recursively, so ``default: {}`` brings its
    children's defaults), and fields the schema does not declare are dropped unless
    ``x-kubernetes-preserve-unknown-fields`` keeps them. Nothing is validated: enums,
    patterns, ``required`` and CEL rules are not emulated.
    """
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_schema(item, schema["items"]) for item in value]
    if not isinstance(value, dict):
        return value
    properties: Mapping[str, Any] = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    result: Body = {}
    for key, item in value.items():
        if key in properties:
            result[key] = apply_schema(item, properties[key])
        elif isinstance(extra, dict):
            result[key] = apply_schema(item, extra)
        elif schema.get("x-kubernetes-preserve-unknown-fields") or extra is True or (
                not properties and extra is None and schema.get("type") != "object"):
            result[key] = item
    for key, sub in properties.items():
        if key not in result and "default" in sub:
            result[key] = apply_schema(copy.deepcopy(sub["default"]), sub)
    return result


# -- the emulator ----------------------------------------------------------------------------

LogEntry = tuple[int, kmock.resource, str, Body, Body | None]  # rv, resource, type, new, old


@attrs.define(kw_only=True)
class QkmsEmulator(kmock.KubernetesEmulator):
    """kmock's Kubernetes emulator, made faithful enough for a real Kopf operator.

    All writes happen in the ``_serve_*`` fallbacks (not in kmock's ``_handle``), so each
    one gets its resourceVersion, name and finalizer semantics in one place; kmock's DSL
    reactions (``emulator['patch'] << 500``) still take priority for fault injection, and
    ``emulator.objects[...]`` still holds every object's history for assertions.
    """

    bookmark_interval: float = 1.0  # how often idle watches get a BOOKMARK (keeps Kopf alive)
    watch_timeout: float = 3600.0  # when a watch without timeoutSeconds is closed
    event_log_size: int = 10_000  # watch-events kept for resuming watches by resourceVersion
    history_size: int = 20  # object versions kept in kmock's per-object history
    dirty: bool = attrs.field(default=False, init=False)
    _rv: int = attrs.field(default=0, init=False)
    _floor: int = attrs.field(default=0, init=False)
    _log: collections.deque[LogEntry] = attrs.field(factory=collections.deque, init=False)
    _tick: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    _schemas: dict[kmock.resource, Body] = attrs.field(factory=dict, init=False)
    _watch_serial: int = attrs.field(default=0, init=False)
    _watches: dict[int, Body] = attrs.field(factory=dict, init=False)  # serial -> open watch

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.fallback[kmock.method.PUT] << self._serve_replace
        self.fallback[f"get {WATCHES_PATH}"] << self._serve_open_watches
        with warnings.catch_warnings():  # kmock 0.8 uses the deprecated read_binary()
            warnings.simplefilter("ignore", DeprecationWarning)
            self.resources.load_bundled()
        for key, info in declared_resources().items():
            self.resources[key] = info
        for name in DEFAULT_NAMESPACES:
            self._create(NAMESPACES, None, {"metadata": {"name": name}})

    # kmock's KubernetesEmulator._handle() writes before dispatching; skip it: the fallbacks
    # below do all the writing, and kmock's reactions and discovery still apply.
    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        return await kmock.KubernetesScaffold._handle(self, request)

    def _get_resources(self) -> list[kmock.resource]:
        """Discovery shows the declared resources only, never ones guessed from objects."""
        return list(self.resources)

    @property
    def resource_version(self) -> int:
        return self._rv

    # -- reading ---------------------------------------------------------------------------

    def _info(self, resource: kmock.resource | None) -> kmock.ResourceInfo:
        if resource is None or resource not in self.resources:
            raise _error(404, "NotFound", f"the server could not find the resource {resource}")
        return self.resources[resource]

    def _checked(self, request: kmock.Request) -> kmock.ResourceInfo:
        """The resource's info, or 404 when a cluster-scoped one is asked in a namespace."""
        info = self._info(request.resource)
        if request.namespace and not info.namespaced:
            raise _error(404, "NotFound", f"{request.resource} is not namespaced")
        return info

    def _live(self, resource: kmock.resource | None = None) -> Iterator[tuple[Any, Body]]:
        for key, obj in list(self._objects.items()):
            if not obj.deleted and (resource is None or key[0] == resource):
                yield key, obj.raw

    def _get(self, resource: kmock.resource, namespace: str | None, name: str) -> Body | None:
        key = (resource, namespace, name)
        if key not in self._objects or self._objects[key].deleted:
            return None
        return self._objects[key].raw

    def _require(self, resource: kmock.resource, namespace: str | None, name: str) -> Body:
        body = self._get(resource, namespace, name)
        if body is None:
            raise _error(404, "NotFound", f'{resource.plural} "{name}" not found',
                         name=name, kind=resource.plural)
        return body

    def _matcher(self, request: kmock.Request) -> Callable[[Body], bool]:
        labels = label_matcher(request.params.get("labelSelector", ""))
        fields = field_matcher(request.params.get("fieldSelector", ""))

        def match(body: Body) -> bool:
            meta = body.get("metadata") or {}
            return ((request.namespace is None or meta.get("namespace") == request.namespace)
                    and (request.name is None or meta.get("name") == request.name)
                    and labels(meta.get("labels") or {}) and fields(body))
        return match

    # -- writing (synchronous: no awaits, so each write is atomic in the event loop) -------

    def _commit(self, resource: kmock.resource, kind: str, body: Body, old: Body | None) -> None:
        """Store a new version with the next resourceVersion and log its watch-event."""
        self._rv += 1
        meta = body["metadata"]
        meta["resourceVersion"] = str(self._rv)
        key = (resource, meta.get("namespace"), meta["name"])
        if key in self._objects:
            history = self._objects[key].history
            history.append(body)
            if kind == "DELETED":
                history.append(None)
            del history[:-self.history_size]
        else:
            self._objects[key] = body
        while self._log and len(self._log) >= self.event_log_size:
            self._floor = self._log.popleft()[0]
        self._log.append((self._rv, resource, kind, body, old))
        self._tick.set()
        self._tick = asyncio.Event()
        self.dirty = True

    def _normalise(self, resource: kmock.resource, body: Body) -> None:
        """What the real API server does to some kinds on every write."""
        if resource == SECRETS:
            body.setdefault("type", "Opaque")
            for key, value in (body.pop("stringData", None) or {}).items():
                body.setdefault("data", {})[key] = base64.b64encode(value.encode()).decode()
        elif resource == NAMESPACES:
            deleting = bool(body["metadata"].get("deletionTimestamp"))
            body.setdefault("status", {})["phase"] = "Terminating" if deleting else "Active"
        elif resource in self._schemas:  # a custom resource whose CRD has a schema
            kept = {k: body.pop(k) for k in ("apiVersion", "kind", "metadata") if k in body}
            shaped = apply_schema(body, self._schemas[resource])
            body.clear()
            body.update(kept, **shaped)
        elif resource == CRDS:
            names = (body.get("spec") or {}).get("names") or {}
            body["status"] = {"acceptedNames": names, "conditions": [
                {"type": "Established", "status": "True"},
                {"type": "NamesAccepted", "status": "True"}]}

    def _create(self, resource: kmock.resource, namespace: str | None, data: Body) -> Body:
        info = self._info(resource)
        body = copy.deepcopy(data)
        meta = body["metadata"] = dict(body.get("metadata") or {})
        if info.namespaced:
            if not namespace:
                raise _error(405, "MethodNotAllowed", "create a namespaced object in its "
                                                      "namespace's URL")
            if meta.get("namespace") not in (None, namespace):
                raise _error(400, "BadRequest", "the namespace of the object does not match "
                                                "the namespace on the request")
            ns = self._get(NAMESPACES, None, namespace)
            if ns is None:
                raise _error(404, "NotFound", f'namespaces "{namespace}" not found')
            if ns["metadata"].get("deletionTimestamp"):
                raise _error(403, "Forbidden", f"namespace {namespace} is being terminated")
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        name = meta.get("name")
        if not name and meta.get("generateName"):
            name = meta["generateName"] + "".join(random.choices(NAME_SUFFIX_ALPHABET, k=5))
        if not name:
            raise _error(422, "Invalid", "metadata.name: Required value: name or generateName "
                                         "is required")
        if self._get(resource, meta.get("namespace"), name) is not None:
            raise _error(409, "AlreadyExists", f'{resource.plural} "{name}" already exists',
                         name=name, kind=resource.plural)
        for field in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
            meta.pop(field, None)
        meta.update(name=name, uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        body["apiVersion"], body["kind"] = _api_version(resource), info.kind
        self._normalise(resource, body)
        self._commit(resource, "ADDED", body, None)
        if resource == CRDS:
            self._register_crd(body)
        return copy.deepcopy(body)

    def _update(self, resource: kmock.resource, old: Body, new: Any,
                subresource: str | None) -> Body:
        """Replace `old` by `new` (already patched or PUT) with the API server's rules."""
        info = self._info(resource)
        if subresource not in (None, "status", "finalize") or (
                subresource is not None and subresource not in info.subresources):
            raise _error(404, "NotFound", f"subresource {subresource!r} is not emulated")
        if not isinstance(new, dict):
            raise _error(422, "Invalid", "the patched object is not a JSON object")
        rv = (new.get("metadata") or {}).get("resourceVersion")
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise _error(409, "Conflict", "the object has been modified; please apply your "
                                          "changes to the latest version and try again")
        if subresource == "status":
            new, status = copy.deepcopy(old), new.get("status")
            new.pop("status", None)
            if status is not None:
                new["status"] = status
        else:
            new["metadata"] = meta = dict(new.get("metadata") or {})
            for field in SERVER_FIELDS:
                if field in old["metadata"]:
                    meta[field] = old["metadata"][field]
                else:
                    meta.pop(field, None)
            new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
            if "status" in info.subresources:
                new.pop("status", None)
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
            added = set(meta.get("finalizers") or ()) - set(old["metadata"].get("finalizers") or ())
            if old["metadata"].get("deletionTimestamp") and added:
                raise _error(422, "Forbidden", "no new finalizers can be added if the object "
                                               "is being deleted")
        self._normalise(resource, new)
        if _without_rv(new) == _without_rv(old):
            return copy.deepcopy(old)  # a no-op write: no new resourceVersion, no event
        if _spec_of(new) != _spec_of(old):
            new["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and resource != NAMESPACES:
            self._commit(resource, "DELETED", new, old)
            self._after_removal(resource, new)
        else:
            self._commit(resource, "MODIFIED", new, old)
            if resource == CRDS:
                self._register_crd(new)
            if resource == NAMESPACES:
                self._reap_namespace(meta["name"])
        return copy.deepcopy(new)

    def _delete(self, resource: kmock.resource, old: Body) -> Body:
        """Delete now, or mark for deletion while finalizers (or namespace contents) remain."""
        meta = old["metadata"]
        if meta.get("deletionTimestamp"):
            return copy.deepcopy(old)
        new = copy.deepcopy(old)
        if meta.get("finalizers") or resource == NAMESPACES:
            new["metadata"].update(deletionTimestamp=_now(), deletionGracePeriodSeconds=0)
            self._normalise(resource, new)
            self._commit(resource, "MODIFIED", new, old)
            if resource == NAMESPACES:
                for (res, namespace, _), body in list(self._live()):
                    if namespace == meta["name"]:
                        self._delete(res, body)
                self._reap_namespace(meta["name"])
            return copy.deepcopy(self._get(resource, meta.get("namespace"), meta["name"]) or new)
        self._commit(resource, "DELETED", new, old)
        self._after_removal(resource, new)
        return copy.deepcopy(new)

    def _after_removal(self, resource: kmock.resource, body: Body) -> None:
        """Unregister a deleted CRD, finish a terminating namespace, collect dependents."""
        meta = body["metadata"]
        if resource == CRDS:
            self._register_crd(body, remove=True)
        if meta.get("namespace"):
            self._reap_namespace(meta["namespace"])
        live_uids = {b["metadata"]["uid"] for _, b in self._live()}
        for (res, _, _), dependent in list(self._live()):
            owners = {ref.get("uid") for ref in dependent["metadata"].get("ownerReferences") or ()}
            if meta["uid"] in owners and not owners & live_uids:
                self._delete(res, dependent)

    def _reap_namespace(self, name: str) -> None:
        ns = self._get(NAMESPACES, None, name)
        if (ns and ns["metadata"].get("deletionTimestamp") and not ns["metadata"].get("finalizers")
                and not any(key[1] == name for key, _ in self._live())):
            self._commit(NAMESPACES, "DELETED", copy.deepcopy(ns), ns)

    def _register_crd(self, body: Body, *, remove: bool = False) -> None:
        """Serve (or stop serving) a CRD's resources in discovery, as the real API does."""
        spec = body.get("spec") or {}
        names = spec.get("names") or {}
        if not spec.get("group") or not names.get("plural") or not names.get("kind"):
            return
        for version in spec.get("versions") or ():
            resource = kmock.resource(spec["group"], version["name"], names["plural"])
            self._schemas.pop(resource, None)
            if remove or not version.get("served", True):
                if resource in self.resources:
                    del self.resources[resource]
                continue
            schema = (version.get("schema") or spec.get("validation") or {}).get("openAPIV3Schema")
            if schema:
                self._schemas[resource] = schema
            self.resources[resource] = kmock.ResourceInfo(
                kind=names["kind"], singular=names.get("singular") or names["kind"].lower(),
                namespaced=spec.get("scope") == "Namespaced", verbs=ALL_VERBS,
                shortnames=names.get("shortNames") or (), categories=names.get("categories") or (),
                subresources=set(version.get("subresources") or {}))

    def apply_crds(self, paths: Iterable[Path]) -> None:
        """Create or update the CRDs found in YAML files, as ``kubectl apply`` would."""
        for path in paths:
            for doc in yaml.safe_load_all(path.read_text()):
                if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                    old = self._get(CRDS, None, doc["metadata"]["name"])
                    if old is None:
                        self._create(CRDS, None, doc)
                    else:
                        meta = {**old["metadata"], **doc["metadata"]}
                        self._update(CRDS, old, {**copy.deepcopy(doc), "metadata": meta}, None)

    # -- serving -----------------------------------------------------------------------------

    async def _serve_fetch(self, request: kmock.Request) -> kmock.Payload:
        self._checked(request)
        async with self._lock:
            return copy.deepcopy(self._require(request.resource, request.namespace, request.name))

    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        info = self._checked(request)
        match = self._matcher(request)
        async with self._lock:
            items = [copy.deepcopy(b) for _, b in self._live(request.resource) if match(b)]
            rv = self._rv
        items.sort(key=lambda b: (b["metadata"].get("namespace") or "", b["metadata"]["name"]))
        limit = int(request.params.get("limit") or 0)
        start = int(request.params.get("continue") or 0)
        page = items[start:start + limit] if limit else items[start:]
        meta: Body = {"resourceVersion": str(rv)}
        if limit and start + limit < len(items):
            meta.update({"continue": str(start + limit),
                         "remainingItemCount": len(items) - start - limit})
        return {"apiVersion": _api_version(request.resource), "kind": f"{info.kind}List",
                "metadata": meta, "items": page}

    async def _serve_create(self, request: kmock.Request) -> kmock.Payload:
        if not isinstance(request.data, dict):
            raise _error(400, "BadRequest", "the request body must be a JSON object")
        review = {"tokenreviews": self._token_review,
                  "subjectaccessreviews": self._access_review}.get(request.resource.plural)
        if review is not None:  # reviews are answered, never stored
            return kmock.Response(status=201, payload={**request.data,
                                                       "status": review(request.data)})
        self._checked(request)
        async with self._lock:
            body = self._create(request.resource, request.namespace, request.data)
        return kmock.Response(status=201, payload=body)

    # -- authentication and RBAC, as the API server answers reviews ---------------------
    def _live_of(self, plural: str) -> list[Body]:
        return [body for key, body in self._live() if key[0].plural == plural]

    def _token_review(self, review: Body) -> Body:
        """A token is a ServiceAccount's if a ``kubernetes.io/service-account-token``
        Secret holds it (the legacy token Secrets, which need no signing keys here)."""
        token = base64.b64encode(str((review.get("spec") or {}).get("token", "")).encode())
        for secret in self._live_of("secrets"):
            meta = secret.get("metadata") or {}
            account = (meta.get("annotations") or {}).get("kubernetes.io/service-account.name")
            if account and (secret.get("data") or {}).get("token") == token.decode():
                ns = meta.get("namespace")
                return {"authenticated": True, "user": {
                    "username": f"system:serviceaccount:{ns}:{account}",
                    "uid": meta.get("uid", ""),
                    "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}",
                               "system:authenticated"]}}
        return {"authenticated": False, "error": "invalid bearer token"}

    def _access_review(self, review: Body) -> Body:
        """RBAC as the API server applies it: (Cluster)RoleBindings naming the user, their
        roles' rules matching group, resource, verb and resource name."""
        spec = review.get("spec") or {}
        attrs = spec.get("resourceAttributes") or {}
        user, ns = spec.get("user", ""), attrs.get("namespace", "")

        def names_user(binding: Body) -> bool:
            for subject in binding.get("subjects") or []:
                if subject.get("kind") == "ServiceAccount" and user == (
                        f"system:serviceaccount:{subject.get('namespace')}:{subject.get('name')}"):
                    return True
                if subject.get("kind") == "User" and subject.get("name") == user:
                    return True
            return False

        def role(ref: Body, namespace: str | None) -> Body | None:
            plural = "clusterroles" if ref.get("kind") == "ClusterRole" else "roles"
            return next((r for r in self._live_of(plural)
                         if r["metadata"]["name"] == ref.get("name")
                         and (plural == "clusterroles"
                              or r["metadata"].get("namespace") == namespace)), None)

        def allows(rule: Body) -> bool:
            def has(values: Any, wanted: str) -> bool:
                return "*" in (values or []) or wanted in (values or [])
            names = rule.get("resourceNames") or []
            return (has(rule.get("apiGroups"), attrs.get("group", ""))
                    and has(rule.get("resources"), attrs.get("resource", ""))
                    and has(rule.get("verbs"), attrs.get("verb", ""))
                    and (not names or attrs.get("name") in names))

        bindings = [(b, ns) for b in self._live_of("rolebindings")
                    if b["metadata"].get("namespace") == ns]
        bindings += [(b, None) for b in self._live_of("clusterrolebindings")]
        for binding, namespace in bindings:
            if names_user(binding):
                found = role(binding.get("roleRef") or {}, namespace)
                if found and any(allows(rule) for rule in found.get("rules") or []):
                    return {"allowed": True, "reason": f"RBAC: {binding['metadata']['name']}"}
        return {"allowed": False, "reason": "no RBAC rule allows it"}

    async def _serve_update(self, request: kmock.Request) -> kmock.Payload:
        content_type = {k.lower(): v for k, v in request.headers.items()}.get("content-type", "")
        patch = request.data
        self._checked(request)
        async with self._lock:
            old = self._require(request.resource, request.namespace, request.name)
            if "json-patch" in content_type:
                if not isinstance(patch, list):
                    raise _error(400, "BadRequest", "a JSON-patch must be a list of operations")
                try:
                    new = jsonpatch.apply_patch(copy.deepcopy(old), patch)
                except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
                    raise _error(422, "Invalid", f"the JSON-patch failed: {exc}") from exc
            elif "apply-patch" in content_type:
                raise _error(415, "UnsupportedMediaType", "server-side apply is not emulated")
            elif isinstance(patch, dict):  # merge-patch; strategic merge is treated as one
                new = merge_patch(copy.deepcopy(old), patch)
            else:
                raise _error(400, "BadRequest", "a merge-patch must be a JSON object")
            return self._update(request.resource, old, new, request.subresource)

    async def _serve_replace(self, request: kmock.Request) -> kmock.Payload:
        if request.resource is None or request.name is None:
            raise _error(405, "MethodNotAllowed", "PUT needs an object's URL")
        if not isinstance(request.data, dict):
            raise _error(400, "BadRequest", "the request body must be a JSON object")
        if (request.data.get("metadata") or {}).get("name") not in (None, request.name):
            raise _error(400, "BadRequest", "the name of the object does not match the URL")
        self._checked(request)
        async with self._lock:
            old = self._require(request.resource, request.namespace, request.name)
            return self._update(request.resource, old, copy.deepcopy(request.data),
                                request.subresource)

    async def _serve_delete(self, request: kmock.Request) -> kmock.Payload:
        options = request.data if isinstance(request.data, dict) else {}
        preconditions = options.get("preconditions") or {}
        self._checked(request)
        async with self._lock:
            old = self._require(request.resource, request.namespace, request.name)
            for field in ("uid", "resourceVersion"):
                if preconditions.get(field) not in (None, old["metadata"][field]):
                    raise _error(409, "Conflict", f"precondition failed: {field} mismatch")
            return self._delete(request.resource, old)

    def _bookmark(self, request: kmock.Request, rv: int, *, initial_end: bool = False) -> Body:
        meta: Body = {"resourceVersion": str(rv)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {"type": "BOOKMARK", "object": {
            "apiVersion": _api_version(request.resource), "kind": self._info(request.resource).kind,
            "metadata": meta}}

    @staticmethod
    def _gone(message: str, code: int = 410) -> Body:
        return {"type": "ERROR", "object": {"apiVersion": "v1", "kind": "Status",
                                            "status": "Failure", "code": code,
                                            "reason": "Expired" if code == 410 else "BadRequest",
                                            "message": message, "metadata": {}}}

    def _events_since(self, request: kmock.Request, since: int,
                      match: Callable[[Body], bool]) -> list[Body]:
        """Watch-events after `since` as this watcher sees them through its selectors."""
        entries: list[LogEntry] = []
        for entry in reversed(self._log):
            if entry[0] <= since:
                break
            if entry[1] == request.resource:
                entries.append(entry)
        events = []
        for _, _, kind, new, old in reversed(entries):
            now_in, was_in = match(new), old is not None and match(old)
            if kind == "MODIFIED" and now_in != was_in:  # moved into/out of the selection
                kind = "ADDED" if now_in else "DELETED"
            if now_in or (was_in and kind == "DELETED"):
                events.append({"type": kind, "object": new})
        return events

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[kmock.Payload]:
        """A watch with resourceVersion semantics, bookmarks and a server-side timeout."""
        self._checked(request)
        match = self._matcher(request)  # errors raise here, before the stream starts
        params = request.params
        deadline = time.monotonic() + float(params.get("timeoutSeconds") or self.watch_timeout)
        bookmarks = params.get("allowWatchBookmarks") == "true"
        initial = params.get("sendInitialEvents") == "true"
        requested = params.get("resourceVersion") or ""
        head: list[Body] = []
        since: int | None = None
        serial = 0  # set when the watch is open: see open_watches()
        async with self._lock:
            if initial or requested in ("", "0"):
                since = self._rv
                head = [{"type": "ADDED", "object": b} for _, b in self._live(request.resource)
                        if match(b)]
                if initial:
                    head.append(self._bookmark(request, since, initial_end=True))
            elif not requested.isdigit():
                head = [self._gone(f"invalid resourceVersion {requested!r}", 400)]
            elif not self._floor <= int(requested) <= self._rv:
                head = [self._gone(f"too old resource version: {requested} ({self._rv})")]
            else:
                since = int(requested)
            if since is not None:  # from here on, every later write reaches this watcher
                self._watch_serial += 1
                serial = self._watch_serial
                self._watches[serial] = {
                    "serial": serial, "group": request.resource.group,
                    "version": request.resource.version, "plural": request.resource.plural,
                    "namespace": request.namespace, "resourceVersion": str(since),
                    "params": dict(params)}
        try:
            yield b""  # send the headers now, even if no event follows for a while
            for event in head:
                yield event
            while since is not None and not self._closing:
                tick = self._tick
                if since < self._floor:
                    yield self._gone(f"too old resource version: {since} ({self._rv})")
                    return
                events, since = self._events_since(request, since, match), self._rv
                for event in events:
                    yield event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                wait = min(remaining, self.bookmark_interval) if bookmarks else remaining
                try:
                    await asyncio.wait_for(tick.wait(), timeout=wait)
                except TimeoutError:
                    if bookmarks and not self._closing:
                        yield self._bookmark(request, since)
        finally:
            self._watches.pop(serial, None)

    def open_watches(self) -> Body:
        """The watch-streams open now, each numbered; ``serial`` is the last number given.

        A watch counts as open once its starting resourceVersion is fixed: every write after
        that reaches it. Numbers only grow, so ``serial`` taken before an operator starts
        tells its watches from those of an earlier (maybe killed, not yet noticed) run.
        """
        return {"serial": self._watch_serial,
                "items": [copy.deepcopy(w) for _, w in sorted(self._watches.items())]}

    async def _serve_open_watches(self, request: kmock.Request) -> kmock.Payload:
        return self.open_watches()

    def close_watches(self) -> None:
        """End every watch stream, so the HTTP server can shut down without waiting."""
        self._closing = True
        self._tick.set()

    # -- persistence -------------------------------------------------------------------------

    def dump_state(self, log_entries: int = 500) -> Body:
        """Objects, the resourceVersion, and the newest watch-events (so watches resume)."""
        log = list(self._log)[-log_entries:] if log_entries else []
        dropped = len(self._log) - len(log)
        return {
            "resourceVersion": self._rv,
            "floor": self._log[dropped - 1][0] if dropped else self._floor,
            "objects": [{"resource": [res.group, res.version, res.plural], "namespace": ns,
                         "name": name, "body": body} for (res, ns, name), body in self._live()],
            "log": [[rv, [res.group, res.version, res.plural], kind, new, old]
                    for rv, res, kind, new, old in log],
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Replace everything by a dumped state; watches resume from its resourceVersions."""
        self._objects.clear()
        for item in state["objects"]:
            key = (kmock.resource(*item["resource"]), item["namespace"], item["name"])
            self._objects[key] = item["body"]
        self._rv = int(state["resourceVersion"])
        self._floor = int(state.get("floor", self._rv))
        self._log = collections.deque((rv, kmock.resource(*res), kind, new, old)
                                      for rv, res, kind, new, old in state.get("log", ()))
        for _, body in self._live(CRDS):
            self._register_crd(body)

    def save(self, path: Path) -> None:
        """Write the state atomically, so a crash mid-write never leaves a broken file."""
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.dump_state()))
        os.replace(tmp, path)
        self.dirty = False


# -- the emulator as a process -----------------------------------------------------------------

def crd_files(crd_dir: Path | None) -> list[Path]:
    return sorted(crd_dir.glob("*.yaml")) if crd_dir and crd_dir.is_dir() else []


def new_emulator(state_path: Path | None, crd_dir: Path | None) -> QkmsEmulator:
    """An emulator with the saved state (if any) and the CRDs from `crd_dir` applied."""
    emulator = QkmsEmulator()
    if state_path is not None and state_path.exists():
        emulator.load_state(json.loads(state_path.read_text()))
    emulator.apply_crds(crd_files(crd_dir))
    return emulator


async def serve(port: int, state_path: Path | None, crd_dir: Path | None) -> None:
    """Serve until SIGTERM/SIGINT, saving the state when dirty and at the end."""
    emulator = new_emulator(state_path, crd_dir)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    async with emulator, kmock.Server(emulator, host="127.0.0.1", port=port) as server:
        print(f"kmock serving {server.url} (resourceVersion {emulator.resource_version})",
              flush=True)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.2)
            if state_path is not None and emulator.dirty:
                emulator.save(state_path)
        emulator.close_watches()
    if state_path is not None:
        emulator.save(state_path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.kube", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", type=Path, default=None, help="JSON file to load and keep")
    parser.add_argument("--crds", type=Path, default=CRD_DIR, help="a directory of CRD YAMLs")
    parser.add_argument("--no-crds", action="store_true", help="apply no CRD YAMLs")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.state, None if args.no_crds else args.crds))


# -- the test side: start/stop the emulator, talk to it ---------------------------------------

def die_with_parent() -> None:
    """``preexec_fn`` for test servers: on Linux, SIGTERM the child when pytest dies, so a
    crashed or interrupted test run leaves no emulator or operator running."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_kubeconfig(path: Path, url: str, namespace: str = "default") -> Path:
    """A kubeconfig for Kopf and the kubernetes client; the token is a placeholder."""
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": url}}],
        "users": [{"name": "kmock", "user": {"token": "qkms-test-token"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock",
                                                   "namespace": namespace}}],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def resource_path(resource: str | kmock.resource, namespace: str | None = None,
                  name: str | None = None, subresource: str | None = None) -> str:
    """The URL path of ``'v1/configmaps'``, ``'qkms.io/v1alpha1/managedkeys'``, etc."""
    res = kmock.resource(resource)
    if res.version is None:
        raise ValueError(f"{resource!r} has no API version: use KubeAPI.resolve() for it")
    path = f"/api/{res.version}" if not res.group else f"/apis/{res.group}/{res.version}"
    if namespace:
        path += f"/namespaces/{namespace}"
    path += f"/{res.plural}"
    return path + "".join(f"/{part}" for part in (name, subresource) if part)


class KubeError(Exception):
    """A non-2xx answer from the API; `body` is the Kubernetes ``Status`` when there is one."""

    def __init__(self, status: int, body: Any) -> None:
        message = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.body = body


class ServerStartError(RuntimeError):
    """The emulator did not come up; the message carries its log."""


async def eventually(probe: Callable[[], Awaitable[T] | T], *, timeout: float = 15.0,
                     interval: float = 0.05, what: str = "the condition",
                     context: Callable[[], str] | None = None) -> T:
    """Poll `probe` (sync or async) until it returns something truthy, or time out with a
    useful message. Tests wait for outcomes this way instead of sleeping; API and file
    errors count as "not yet".
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = probe()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result  # type: ignore[return-value]
        except (KubeError, aiohttp.ClientError, OSError) as exc:
            last_error = exc
        if time.monotonic() > deadline:
            extra = f"; last error: {last_error!r}" if last_error else ""
            details = f"\n{context()}" if context else ""
            raise TimeoutError(f"{what} not reached within {timeout}s{extra}{details}")
        await asyncio.sleep(interval)


class KubeAPI:
    """The emulator under test: its URL, kubeconfig, lifecycle, and HTTP helpers.

    By default it runs in a subprocess (``python -m tests.support.kube``), so it outlives
    operator restarts and can itself be stopped (state saved), killed, and restarted on the
    same port. ``in_process=True`` runs it in the test's event loop instead: faster, and
    ``.emulator`` then gives kmock's objects and DSL (e.g. fault injection) to the test.
    """

    def __init__(self, workdir: Path, *, in_process: bool = False,
                 crd_dir: Path | None = CRD_DIR) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.in_process = in_process
        self.crd_dir = crd_dir
        self.port = free_port()
        self.state_path = workdir / "kube-state.json"
        self.log_path = workdir / "kube-api.log"
        self.kubeconfig = write_kubeconfig(workdir / "kubeconfig.yaml", self.url)
        self.emulator: QkmsEmulator | None = None
        self._server: kmock.Server | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._discovery: list[tuple[kmock.resource, set[str]]] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for Kopf and the kubernetes client to log in to this API."""
        return {"KUBECONFIG": str(self.kubeconfig)}

    @property
    def running(self) -> bool:
        return self._server is not None or (self._proc is not None and self._proc.poll() is None)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def start(self, timeout: float = 15.0) -> None:
        if self.in_process:
            self.emulator = new_emulator(self.state_path, self.crd_dir)
            await self.emulator.__aenter__()
            self._server = kmock.Server(self.emulator, host="127.0.0.1", port=self.port)
            await self._server.__aenter__()
            return
        command = [sys.executable, "-m", "tests.support.kube", "--port", str(self.port),
                   "--state", str(self.state_path)]
        command += ["--crds", str(self.crd_dir)] if self.crd_dir else ["--no-crds"]
        pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                          env={**os.environ, "PYTHONPATH": pythonpath},
                                          preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise ServerStartError(f"kmock exited with {self._proc.returncode}:\n{self.log()}")
            try:
                await self.request("GET", "/version")
                return
            except (aiohttp.ClientError, OSError):
                if time.monotonic() > deadline:
                    await self.kill()
                    raise ServerStartError(f"kmock did not answer in {timeout}s:\n{self.log()}")
                await asyncio.sleep(0.05)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully; the state is saved and the next start() reloads it."""
        if self._server is not None and self.emulator is not None:
            self.emulator.close_watches()
            await self._server.__aexit__(None, None, None)
            self.emulator.save(self.state_path)
            await self.emulator.__aexit__(None, None, None)
            self._server = None
        elif self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            deadline = time.monotonic() + timeout
            while self._proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if self._proc.poll() is None:
                await self.kill()

    async def kill(self) -> None:
        """SIGKILL the emulator process: only the state saved in the last 0.2 s survives."""
        if self._proc is None:
            raise RuntimeError("only a subprocess emulator can be killed")
        if self._proc.poll() is None:
            self._proc.kill()
            while self._proc.poll() is None:
                await asyncio.sleep(0.02)

    async def restart(self, *, keep_state: bool = True) -> None:
        await self.stop()
        if not keep_state:
            self.state_path.unlink(missing_ok=True)
        await self.start()

    async def close(self) -> None:
        await self.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- HTTP helpers ----------------------------------------------------------------------

    @property
    def session(self) -> aiohttp.ClientSession:
        """No keep-alive: the server may restart between calls."""
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        return self._session

    async def request(self, method: str, path: str, *, body: Any = None,
                      params: Mapping[str, str] | None = None,
                      content_type: str = "application/json") -> Any:
        """One API call; raises :class:`KubeError` on non-2xx."""
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        async with self.session.request(method, self.url + path, data=data, params=params,
                                        headers=headers) as rsp:
            text = await rsp.text()
            try:
                answer = json.loads(text) if text else None
            except ValueError:
                answer = text
            if rsp.status >= 400:
                raise KubeError(rsp.status, answer)
            return answer

    async def open_watches(self) -> Body:
        """The emulator's open watch-streams (see :meth:`QkmsEmulator.open_watches`)."""
        return dict(await self.request("GET", WATCHES_PATH))

    async def wait_watching(self, resource: str, namespace: str | None = None, *,
                            after: int = 0, timeout: float = 15.0,
                            context: Callable[[], str] | None = None) -> Body:
        """Wait until a watch of `resource` (in `namespace`, or cluster-wide) numbered above
        `after` is open, and return it: from then on, that watcher sees every write."""
        res = await self.resolve(resource)

        async def probe() -> Body | None:
            for watch in (await self.open_watches())["items"]:
                if (watch["serial"] > after and watch["namespace"] == namespace and
                        (watch["group"], watch["version"], watch["plural"]) ==
                        (res.group, res.version, res.plural)):
                    return dict(watch)
            return None
        where = f"in {namespace!r}" if namespace else "cluster-wide"
        return await eventually(probe, timeout=timeout, what=f"a watch of {res} {where}",
                                context=context)

    async def resolve(self, resource: str | kmock.resource) -> kmock.resource:
        """``'v1/configmaps'`` as is; ``'cm'``, ``'ConfigMap'``, ``'managedkeys'``,
        ``'mk.qkms.io'`` through discovery, as kubectl does (the core group first)."""
        res = kmock.resource(resource)
        if res.version is not None and res.group is not None:
            return res
        wanted, group = (res.plural or "").lower(), res.group
        for refresh in (False, True):  # a CRD may have been added since the last look
            if refresh or self._discovery is None:
                self._discovery = await self._discover()
            for found, names in self._discovery:
                if wanted in names and group in (None, found.group):
                    return found
        raise KubeError(404, {"message": f"no resource {resource!r} in discovery"})

    async def _discover(self) -> list[tuple[kmock.resource, set[str]]]:
        versions = [("", "v1", "/api/v1")] + [
            (g["name"], g["preferredVersion"]["version"],
             f"/apis/{g['preferredVersion']['groupVersion']}")
            for g in (await self.request("GET", "/apis"))["groups"]]
        found = []
        for group, version, path in versions:
            for info in (await self.request("GET", path))["resources"]:
                if "/" not in info["name"]:
                    names = {info["name"], info.get("singularName") or "",
                             info["kind"].lower(), *(info.get("shortNames") or ())}
                    found.append((kmock.resource(group, version, info["name"]), names))
        return found

    async def path(self, resource: str | kmock.resource, namespace: str | None = None,
                   name: str | None = None, subresource: str | None = None) -> str:
        return resource_path(await self.resolve(resource), namespace, name, subresource)

    async def create(self, resource: str, body: Body, namespace: str | None = None) -> Body:
        return await self.request("POST", await self.path(resource, namespace), body=body)

    async def get(self, resource: str, name: str, namespace: str | None = None) -> Body | None:
        """The object, or None if it does not exist."""
        try:
            return await self.request("GET", await self.path(resource, namespace, name))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def patch(self, resource: str, name: str, patch: Any, namespace: str | None = None,
                    *, subresource: str | None = None) -> Body:
        """Merge-patch a dict, JSON-patch a list of operations."""
        kind = "json-patch" if isinstance(patch, list) else "merge-patch"
        return await self.request("PATCH", await self.path(resource, namespace, name, subresource),
                                  body=patch, content_type=f"application/{kind}+json")

    async def replace(self, resource: str, body: Body, namespace: str | None = None) -> Body:
        path = await self.path(resource, namespace, body["metadata"]["name"])
        return await self.request("PUT", path, body=body)

    async def delete(self, resource: str, name: str, namespace: str | None = None) -> Body:
        return await self.request("DELETE", await self.path(resource, namespace, name))

    async def list(self, resource: str, namespace: str | None = None, *, labels: str = "",
                   fields: str = "") -> list[Body]:
        params = {k: v for k, v in {"labelSelector": labels, "fieldSelector": fields}.items() if v}
        rsp = await self.request("GET", await self.path(resource, namespace), params=params)
        return list(rsp["items"])

    async def watch(self, resource: str, namespace: str | None = None,
                    **params: str) -> AsyncIterator[Body]:
        """Stream raw watch-events (``params``: resourceVersion, timeoutSeconds, …)."""
        query = {"watch": "true", **params}
        url = self.url + await self.path(resource, namespace)
        async with self.session.get(url, params=query) as rsp:
            if rsp.status >= 400:
                raise KubeError(rsp.status, await rsp.json(content_type=None))
            async for line in rsp.content:
                if line.strip():
                    yield json.loads(line)


@contextlib.asynccontextmanager
async def kube_api(workdir: Path | None = None, *, in_process: bool = False,
                   crd_dir: Path | None = CRD_DIR) -> AsyncIterator[KubeAPI]:
    """Start the emulator on 127.0.0.1 (a free port) for the duration of the block."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qkms-kube-")))
        api = KubeAPI(workdir, in_process=in_process, crd_dir=crd_dir)
        try:
            await api.start()
            yield api
        finally:
            await api.close()


if __name__ == "__main__":
    main()
