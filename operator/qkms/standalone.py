"""Standalone mode: reconcile KeyPolicy and ManagedKey YAML from a folder, GitOps style.

No cluster needed.  The same ``KeyReconciler`` as the operator runs against
the embedded store; projections are written as files under
``<out>/<namespace>/<secret-or-configmap name>/<key>``, statuses as
``<out>/status/<namespace>/<name>.json``.  The folder is re-read when any file
changes; a ManagedKey whose file disappears is finalized as in a cluster.
A bad file (malformed YAML, an invalid resource, a duplicate name) is
reported by path and skipped: every other key keeps being served.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qkms.config import Settings
from qkms.errors import InvalidInputError, QkmsError
from qkms.model.enums import Environment
from qkms.model.managed_key import ManagedKey, ManagedKeyStatus, parse_managed_key
from qkms.model.names import ENVIRONMENT_LABEL
from qkms.model.policy import KeyPolicy, parse_key_policy
from qkms.reconcile.reconciler import KeyReconciler, Outcome
from qkms.reconcile.registry import ServiceRegistry
from qkms.service import KeyManagementService

log = logging.getLogger("key-management:standalone")

BUNDLED_EXAMPLES = Path(__file__).resolve().parent / "examples"
RETRY_SECONDS = 5.0  # after a key's reconcile failed for a reason outside its spec


@dataclass
class Manifests:
    policies: list[KeyPolicy] = field(default_factory=list)
    keys: list[ManagedKey] = field(default_factory=list)
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def manifest_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def fingerprint(folder: Path) -> tuple:
    marks = []
    for path in manifest_files(folder):
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        marks.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(marks)


def load_manifests(folder: Path) -> Manifests:
    """Parse every YAML document; collect per-file errors instead of stopping."""
    found = Manifests()
    seen: dict[tuple[str, str, str], Path] = {}
    for path in manifest_files(folder):
        try:
            documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
        except FileNotFoundError:
            found.errors.append(f"{path}: disappeared while being read")
            continue
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            found.errors.append(f"{path}: malformed YAML: {str(exc).splitlines()[0]}")
            continue
        for doc in documents:
            if not isinstance(doc, dict):
                found.errors.append(f"{path}: a document is not a mapping")
                continue
            kind = doc.get("kind")
            meta = doc.get("metadata") or {}
            if kind == "Namespace":
                found.namespaces[str(meta.get("name"))] = dict(meta.get("labels") or {})
                continue
            if kind not in ("KeyPolicy", "ManagedKey"):
                continue
            meta.setdefault("namespace", "default") if kind == "ManagedKey" else None
            meta.setdefault("generation", 1)
            meta.setdefault("uid", f"standalone:{kind}:{meta.get('namespace', '')}:"
                                   f"{meta.get('name')}")
            doc["metadata"] = meta
            ident = (kind, str(meta.get("namespace", "")), str(meta.get("name")))
            if ident in seen:
                found.errors.append(f"{path}: duplicate {kind} {ident[1]}/{ident[2]} "
                                    f"(first defined in {seen[ident]}); ignored")
                continue
            try:
                if kind == "KeyPolicy":
                    found.policies.append(parse_key_policy(doc))
                else:
                    if meta.get("namespace") == STATUS_FOLDER:  # its projections would land
                        raise InvalidInputError(  # among the statuses of other keys
                            "metadata.namespace", f"{STATUS_FOLDER!r} is the status folder of "
                            "qkms serve's output; use another namespace")
                    found.keys.append(parse_managed_key(doc))
            except InvalidInputError as exc:
                found.errors.append(f"{path}: {kind} {meta.get('name')}: {exc}")
                continue
            seen[ident] = path
    return found


STATUS_FOLDER = "status"  # <out>/status/<namespace>/<name>.json: no namespace may be called so


def safe_path(out: Path, *parts: str) -> Path:
    """``out/parts...`` for writing: every folder below ``out`` is made 0700 or must be a real
    folder; a symbolic link (planted to send a projection elsewhere) is refused."""
    folder = out
    for part in parts[:-1]:
        if part in ("", ".", "..") or "/" in part or "\0" in part:
            raise InvalidInputError("--out", f"{part!r} is not a folder name")
        folder = folder / part
        if folder.is_symlink():
            raise InvalidInputError("--out", f"{folder} is a symbolic link: qkms writes "
                                             "projections only into real folders")
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            if not folder.is_dir() or folder.is_symlink():
                raise InvalidInputError("--out", f"{folder} is not a folder") from None
    return folder / parts[-1]


def read_nofollow(path: Path) -> str | None:
    """A projection file's text, never through a symbolic link (None if absent or a link)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a link where a projection belongs: replace it
            return None
        raise
    with os.fdopen(fd, encoding="utf-8", errors="replace") as handle:
        return handle.read()


def _write_atomic(path: Path, content: str) -> None:
    """Write through a temporary file and rename it over ``path``: a link at ``path`` is
    replaced, never followed.  The caller made the folder with ``safe_path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(content)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ManifestDirectory:
    """The data plane's ``KeyDirectory`` over a folder of manifests: a namespace's
    environment from its Namespace manifest, an environment's service from its KeyPolicy.
    A data-plane worker process uses it alone (it never reconciles); ``Standalone`` adds
    the one reconciler."""

    def __init__(self, settings: Settings, folder: Path, say: Callable[[str], None] = print,
                 clock: Any = None) -> None:
        self.folder, self.say = folder, say
        self.registry = ServiceRegistry(settings, clock=clock)
        self.manifests = Manifests()
        self._fingerprint: tuple | None = None
        self._reported: set[str] = set()
        # environment -> (the policy it was asked with, the service): the hot path skips
        # rebuilding the environment's settings while the manifests stay the same
        self._services: dict[Environment, tuple[KeyPolicy | None, KeyManagementService]] = {}

    def refresh(self) -> bool:
        """Re-read the folder if anything changed; returns whether it did."""
        mark = fingerprint(self.folder)
        if mark == self._fingerprint:
            return False
        self._fingerprint = mark
        self.manifests = load_manifests(self.folder)
        self._services.clear()
        for error in self.manifests.errors:
            if error not in self._reported:
                self.say(f"error: {error}")
        self._reported = set(self.manifests.errors)
        return True

    # -- KeyDirectory, for the data plane ---------------------------------------
    async def environment(self, namespace: str) -> Environment | None:
        """A namespace's environment is its Namespace manifest's label, as in a cluster: a
        namespace with no manifest (or no label) has none, so neither a caller from it nor
        a key in it passes the data plane's environment check."""
        labels = self.manifests.namespaces.get(namespace)
        if labels is None:
            return None
        value = labels.get(ENVIRONMENT_LABEL)
        if value is None or value not in Environment._value2member_map_:
            return None
        return Environment(value)

    async def service(self, environment: Environment) -> KeyManagementService:
        policy = next((p for p in self.manifests.policies
                       if p.spec.environment is environment), None)
        cached = self._services.get(environment)
        if (cached is not None and cached[0] is policy
                and self.registry.existing(environment) is cached[1]):
            return cached[1]
        service = self.registry.get(environment, policy)
        self._services[environment] = (policy, service)
        return service

    async def open_all(self) -> None:
        """Open the service of every environment holding a ManagedKey, as the reconciler
        does (health reports them); one that cannot open is said and skipped."""
        namespaces = {mk.namespace or "default" for mk in self.manifests.keys}
        environments = {await self.environment(ns) for ns in sorted(namespaces)}
        for environment in sorted(filter(None, environments), key=lambda e: e.value):
            try:
                await self.service(environment)
            except (QkmsError, OSError) as exc:
                self.say(f"error: environment {environment.value}: {exc}")


class Standalone(ManifestDirectory):
    def __init__(self, settings: Settings, folder: Path, out: Path,
                 say: Callable[[str], None] = print, clock: Any = None) -> None:
        super().__init__(settings, folder, say, clock)
        self.out = out
        self.reconciler = KeyReconciler(self.registry, clock=clock)
        self.statuses: dict[tuple[str, str], ManagedKeyStatus] = {}
        self.known: dict[tuple[str, str], tuple[ManagedKey, dict[str, str] | None]] = {}
        self.ready = asyncio.Event()  # set after the first full pass: the API may open
        self.failed: set[tuple[str, str]] = set()  # keys whose last reconcile failed
        self._next_prune = 0.0

    async def reconcile_all(self) -> float:
        """Reconcile every key once; returns seconds until one needs attention again."""
        wake = 3600.0
        current = set()
        for mk in self.manifests.keys:
            ident = (mk.namespace or "default", mk.name or "")
            current.add(ident)
            if ident in self.statuses:
                mk = mk.model_copy(update={"status": self.statuses[ident]})
            labels = self.manifests.namespaces.get(ident[0])
            self.known[ident] = (mk, labels)
            try:
                outcome = await self.reconciler.reconcile(mk, labels, self.manifests.policies)
                self._apply(mk, outcome)
            except (QkmsError, OSError) as exc:
                # One key's fault (a full disk, audit storage refused) must not stop the
                # others or the data plane: say it and try again soon.
                self.say(f"error: {ident[0]}/{ident[1]}: {exc}")
                self.failed.add(ident)
                wake = min(wake, RETRY_SECONDS)
                continue
            self.failed.discard(ident)
            wake = min(wake, outcome.requeue_after or 30.0)
        self.failed &= current
        for ident in set(self.statuses) - current:
            try:
                await self._finalize(ident)
            except (QkmsError, OSError) as exc:
                self.say(f"error: {ident[0]}/{ident[1]}: finalizing: {exc}")
                wake = min(wake, RETRY_SECONDS)
        await self.registry.resolve_intents()  # what a killed run left half-made
        if time.monotonic() >= self._next_prune:  # retention, hourly as in the operator
            self._next_prune = time.monotonic() + 3600
            for service in self.registry.all():
                await service.prune_audit()
        return wake

    def _apply(self, mk: ManagedKey, outcome: Outcome) -> None:
        ns, name = mk.namespace or "default", mk.name or ""
        self.statuses[(ns, name)] = outcome.status
        self.out.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_atomic(safe_path(self.out, STATUS_FOLDER, ns, f"{name}.json"),
                      json.dumps(outcome.status.to_dict(), indent=2, sort_keys=True) + "\n")
        projection = mk.spec.projection
        if outcome.projection is not None and projection is not None:
            for target in filter(None, (projection.secret_name, projection.config_map_name)):
                for key, value in outcome.projection.items():
                    path = safe_path(self.out, ns, target, key)
                    if read_nofollow(path) != value:
                        _write_atomic(path, value)
        for event in outcome.events:
            self.say(f"{event.type} {event.reason} {ns}/{name}: {event.message}")

    async def _finalize(self, ident: tuple[str, str]) -> None:
        mk, labels = self.known[ident]
        message = await self.reconciler.delete(mk, labels, self.manifests.policies)
        self.statuses.pop(ident)
        self.known.pop(ident)
        self.say(f"Normal KeyReleased {ident[0]}/{ident[1]}: manifest removed; {message}")

    async def run(self, stop: asyncio.Event, poll: float = 1.0, once: bool = False) -> None:
        self.refresh()
        self.say(f"qkms serve: {len(self.manifests.keys)} ManagedKey(s), "
                 f"{len(self.manifests.policies)} KeyPolicy(ies) from {self.folder}; "
                 f"projections in {self.out}")
        while True:
            wake = await self.reconcile_all()
            self.ready.set()
            if once:
                return
            deadline = asyncio.get_running_loop().time() + wake
            while not stop.is_set() and asyncio.get_running_loop().time() < deadline:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=min(poll, wake))
                except TimeoutError:
                    pass
                if self.refresh():
                    break
            if stop.is_set():
                return


async def serve_worker(directory: ManifestDirectory, start_api: Callable[[], Any],
                       stop: asyncio.Event, poll: float = 1.0,
                       parent: int | None = None) -> None:
    """A data-plane worker of ``qkms serve``: serve the keys the parent's reconciler made,
    re-reading the manifests as they change; never reconcile.  Stops with ``stop`` or when
    the parent process is gone (``parent``: ``ServeConfig.worker_parent``, the pid of the
    ``qkms serve`` that started this worker; None: this process's parent)."""
    from qkms.server.workers import parent_gone

    parent = parent or os.getppid()
    directory.refresh()
    await directory.open_all()
    api = await start_api()
    try:
        while not stop.is_set() and not parent_gone(parent):
            try:
                await asyncio.wait_for(stop.wait(), timeout=poll)
            except TimeoutError:
                pass
            if directory.refresh():
                await directory.open_all()
    finally:
        await api.cleanup()
