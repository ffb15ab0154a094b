"""A record store in Kubernetes Secrets, so nothing of value lives only on a pod's disk.

Each sealed record is one Secret in the operator's namespace.  Secret names
must be DNS labels, so a record's address is hashed into the name and kept
verbatim in an annotation; listing uses a label per record kind.  The
records are already sealed under the KEK, so Secret encryption at rest is a
second layer, not the only one.  The KEK itself lives in its own Secret
(``master_key``), created on first start.

Reads come from an in-memory mirror kept current by a watch (``SecretRecordStore``), so
the event loop that serves keys never waits for the API; writes block and are made from
worker threads.
"""

from __future__ import annotations

import atexit
import base64
import builtins
import contextlib
import hashlib
import logging
import secrets
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import urllib3
from kubernetes import client
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException

from qkms.model.names import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    RECORD_ANNOTATION,
    RECORD_KIND_LABEL,
    RECORD_SCOPE_LABEL,
)
from qkms.store.catalog import KEYS, key_name
from qkms.store.changes import Notices
from qkms.store.records import check_record_name

from .kube_api import LIST_CHUNK, TIMEOUT

log = logging.getLogger("key-management:k8s")
WATCH_SECONDS = 300  # each watch request; then it resumes from the last version seen

KEK_SECRET = "qkms-master-key"  # noqa: S105 - the Secret's name, not its content
BACKUP_KEY_SECRET = "qkms-backup-key"  # noqa: S105 - kept apart from the master key


@contextlib.contextmanager
def _reachable() -> Iterator[None]:
    """An API that does not answer (refused, reset, timed out) fails a write as a full disk
    does, with an ``OSError``: the sealed store turns both into ``StorageError``."""
    try:
        yield
    except urllib3.exceptions.HTTPError as exc:
        raise OSError(f"Kubernetes API unreachable: {type(exc).__name__}") from None


def secret_name(scope: str, kind: str, name: str) -> str:
    digest = hashlib.sha256(f"{scope}/{kind}/{name}".encode()).hexdigest()[:40]
    return f"qkms-rec-{digest}"


Address = tuple[str, str]  # (kind, name)


def _version(meta: Any) -> int:
    """A resourceVersion as a number (etcd's revision), to order what the API says; 0 when
    it is not one (then the newest event simply wins)."""
    value = getattr(meta, "resource_version", None) or ""
    return int(value) if value.isdigit() else 0


_WATCHING: weakref.WeakSet[SecretRecordStore] = weakref.WeakSet()


@atexit.register
def _stop_watching() -> None:
    """At interpreter exit, stop every mirror's watch thread before streams close: a daemon
    thread that logs while Python finalizes can abort the process."""
    for store in list(_WATCHING):
        store.close()


class SecretRecordStore:
    """Records of one scope (an environment) in one namespace.

    Reads never call the API: the store mirrors its Secrets in memory, filled by a paged
    list when it is made and kept current by a watch in a thread of its own (an informer,
    as client-go's). The event loop that serves keys never waits for the Kubernetes API
    to read a record, and another replica's rotation or revocation arrives at watch
    latency. Writes go to the API (blocking: callers run them in a worker thread) and then
    into the mirror, so a writer reads its own writes; an event older than what the
    mirror holds (by resourceVersion) never replaces it.  ``changes`` tells the catalog
    which key records the watch brought (another replica's or data-plane worker's
    rotation or revocation), so it re-reads them before the next use, not after its TTL.
    """

    def __init__(self, core: client.CoreV1Api, namespace: str, scope: str, *,
                 watch: bool = True) -> None:
        """Blocks for the first list (make it off the event loop); `watch` False: no
        thread, a snapshot refreshed by :meth:`resync` (for one-shot readers)."""
        self.core = core
        self.namespace = namespace
        self.scope = scope
        self.selector = f"{RECORD_SCOPE_LABEL}={scope}"
        self._lock = threading.Lock()
        self._records: dict[Address, tuple[int, bytes]] = {}
        self._gone: dict[Address, int] = {}  # deleted, at this version or before
        self._version = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.changes = Notices()
        with _reachable():
            self.resync()
        if watch:
            self._thread = threading.Thread(target=self._watch_forever, daemon=True,
                                            name=f"qkms-records-{scope}")
            _WATCHING.add(self)
            self._thread.start()

    def describe(self) -> str:
        return f"Secrets in namespace {self.namespace} ({self.scope})"

    def close(self) -> None:
        self._stop.set()

    # -- the mirror ------------------------------------------------------------------
    @staticmethod
    def _address(secret: Any) -> Address | None:
        address = (secret.metadata.annotations or {}).get(RECORD_ANNOTATION, "")
        kind, _, name = address.partition("/")
        labels = secret.metadata.labels or {}
        return (kind, name) if kind and name and labels.get(RECORD_KIND_LABEL) == kind else None

    def _remember(self, address: Address, version: int, data: bytes | None) -> bool:
        """Take what the API says at `version` unless the mirror knows something newer;
        whether it did."""
        with self._lock:
            known = max(self._records.get(address, (0, b""))[0], self._gone.get(address, 0))
            if version and known and version <= known:
                return False
            if data is None:
                self._records.pop(address, None)
                self._gone[address] = version
            else:
                self._records[address] = (version, data)
                self._gone.pop(address, None)
            return True

    def resync(self) -> None:
        """A paged list of every record Secret: the mirror becomes the API's view, bar
        writes of this process the list predates."""
        items: list[Any] = []
        token: str | None = None
        while True:
            page = self.core.list_namespaced_secret(
                self.namespace, label_selector=self.selector, limit=LIST_CHUNK,
                _continue=token, _request_timeout=TIMEOUT)
            items += page.items or []
            token = page.metadata._continue if page.metadata else None
            if not token:
                break
        listed: dict[Address, tuple[int, bytes]] = {}
        for item in items:
            address = self._address(item)
            if address is not None:
                listed[address] = (_version(item.metadata),
                                   base64.b64decode((item.data or {}).get("record", "")))
        listed_at = (page.metadata.resource_version if page.metadata else None) or ""
        at = int(listed_at) if listed_at.isdigit() else 0
        with self._lock:
            for address, (version, data) in self._records.items():  # written since the list
                if at and version > at and version > listed.get(address, (0, b""))[0]:
                    listed[address] = (version, data)
            for address, version in self._gone.items():  # deleted since the list
                if address in listed and version >= listed[address][0]:
                    del listed[address]
            self._records = listed
            self._gone = {a: v for a, v in self._gone.items() if at and v > at}
            self._version = listed_at

    def _watch_forever(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                stream = k8s_watch.Watch()
                for event in stream.stream(
                        self.core.list_namespaced_secret, self.namespace,
                        label_selector=self.selector, resource_version=self._version,
                        allow_watch_bookmarks=True, timeout_seconds=WATCH_SECONDS,
                        _request_timeout=WATCH_SECONDS + TIMEOUT):
                    if self._stop.is_set():
                        stream.stop()
                        return
                    self._event(event)
                    backoff = 0.5
                continue  # the server ended this watch (timeout): resume where it was
            except ApiException as exc:
                if exc.status == 410:  # the version is too old: list again
                    self._relist()
                    continue
                if not self._stop.is_set():
                    log.warning("watching record Secrets (%s): %s %s", self.scope,
                                exc.status, exc.reason)
            except Exception as exc:  # the API went away: retry, the mirror stays as it is
                if not self._stop.is_set():
                    log.warning("watching record Secrets (%s): %s", self.scope,
                                type(exc).__name__)
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, 10.0)
            self._relist()

    def _relist(self) -> None:
        try:
            self.resync()
            self.changes.heard_all()  # what changed in the gap is not known: every record
        except Exception as exc:  # noqa: BLE001 - retried by the watch loop
            if not self._stop.is_set():
                log.warning("listing record Secrets (%s): %s", self.scope,
                            type(exc).__name__)

    def _event(self, event: dict[str, Any]) -> None:
        secret = event["object"]
        meta = getattr(secret, "metadata", None)
        if meta is not None and meta.resource_version:
            self._version = meta.resource_version
        if event["type"] not in ("ADDED", "MODIFIED", "DELETED"):
            return  # BOOKMARK: only the version moves
        address = self._address(secret)
        if address is None:
            return
        data = None if event["type"] == "DELETED" else \
            base64.b64decode((secret.data or {}).get("record", ""))
        if self._remember(address, _version(meta), data) and address[0] == KEYS:
            self.changes.heard(key_name(address[1]))  # a write of this process never is

    # -- the RecordStore protocol ----------------------------------------------------
    def get(self, kind: str, name: str) -> bytes | None:
        check_record_name(kind, name)
        with self._lock:
            found = self._records.get((kind, name))
        return found[1] if found is not None else None

    def list(self, kind: str) -> list[str]:
        with self._lock:
            return sorted(name for k, name in self._records if k == kind)

    def kinds(self) -> builtins.list[str]:  # `list` here is the method above
        with self._lock:
            return sorted({kind for kind, _ in self._records})

    def put(self, kind: str, name: str, data: bytes) -> None:
        with _reachable():
            written = self._put(kind, name, data)
        self._remember((kind, name), _version(written.metadata), data)

    def create(self, kind: str, name: str, data: bytes) -> bool:
        with _reachable():
            written = self._put(kind, name, data, replace=False)
        if written is None:
            return False
        self._remember((kind, name), _version(written.metadata), data)
        return True

    def delete(self, kind: str, name: str) -> None:
        with _reachable():
            self._delete(kind, name)
        with self._lock:
            version = self._records.pop((kind, name), (0, b""))[0]
            self._gone[(kind, name)] = max(version, self._gone.get((kind, name), 0))

    def _put(self, kind: str, name: str, data: bytes, *, replace: bool = True) -> Any:
        """The written Secret; None when it exists and `replace` is false."""
        check_record_name(kind, name)
        body: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": secret_name(self.scope, kind, name), "namespace": self.namespace,
                         "labels": {RECORD_KIND_LABEL: kind, RECORD_SCOPE_LABEL: self.scope,
                                    MANAGED_BY_LABEL: MANAGED_BY},
                         "annotations": {RECORD_ANNOTATION: f"{kind}/{name}"}},
            "data": {"record": base64.b64encode(data).decode()},
        }
        # Records are mostly written once (a new key or version): create first, and
        # replace only when it exists (a catalog update), so a new record costs one call.
        try:
            return self.core.create_namespaced_secret(
                self.namespace, body,  # type: ignore[arg-type]  # typed V1Secret; a dict is sent as is
                _request_timeout=TIMEOUT)
        except ApiException as exc:
            if exc.status != 409:
                raise OSError(f"Kubernetes API: {exc.status} {exc.reason}") from None
        if not replace:
            return None
        try:
            return self.core.replace_namespaced_secret(
                body["metadata"]["name"], self.namespace,
                body,  # type: ignore[arg-type]  # typed V1Secret; a dict is sent as is
                _request_timeout=TIMEOUT)
        except ApiException as exc:
            raise OSError(f"Kubernetes API: {exc.status} {exc.reason}") from None

    def _delete(self, kind: str, name: str) -> None:
        try:
            self.core.delete_namespaced_secret(secret_name(self.scope, kind, name), self.namespace,
                                               _request_timeout=TIMEOUT)
        except ApiException as exc:
            if exc.status != 404:
                raise OSError(f"Kubernetes API: {exc.status} {exc.reason}") from None


def load_or_create_kek_secret(core: client.CoreV1Api, namespace: str,
                              name: str = KEK_SECRET) -> bytes:
    """A 32-byte key from its Secret (the master key; the backup key), made on first use."""
    try:
        secret = core.read_namespaced_secret(name, namespace, _request_timeout=TIMEOUT)
        return base64.b64decode((secret.data or {})["master.key"])
    except ApiException as exc:
        if exc.status != 404:
            raise
    kek = secrets.token_bytes(32)
    body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {MANAGED_BY_LABEL: MANAGED_BY}},
            "data": {"master.key": base64.b64encode(kek).decode()}}
    try:
        core.create_namespaced_secret(namespace, body,  # type: ignore[arg-type]  # as in _put
                                      _request_timeout=TIMEOUT)
    except ApiException as exc:
        if exc.status != 409:  # another replica won the race: use its key
            raise
        return load_or_create_kek_secret(core, namespace, name)
    return kek
