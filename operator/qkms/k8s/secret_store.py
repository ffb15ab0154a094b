"""A record store in Kubernetes Secrets, so nothing of value lives only on a pod's disk.

Each sealed record is one Secret in the operator's namespace.  Secret names
must be DNS labels, so a record's address is hashed into the name and kept
verbatim in an annotation; listing uses a label per record kind.  The
records are already sealed under the KEK, so Secret encryption at rest is a
second layer, not the only one.  The KEK itself lives in its own Secret
(``master_key``), created on first start.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import secrets
from collections.abc import Iterator
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from qkms.store.records import check_record_name

from .storage import TIMEOUT, list_pages

KIND_LABEL = "qkms.io/record-kind"
SCOPE_LABEL = "qkms.io/record-scope"
ADDRESS_ANNOTATION = "qkms.io/record"
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


class SecretRecordStore:
    """Records of one scope (an environment) in one namespace."""

    def __init__(self, core: client.CoreV1Api, namespace: str, scope: str) -> None:
        self.core = core
        self.namespace = namespace
        self.scope = scope

    def describe(self) -> str:
        return f"Secrets in namespace {self.namespace} ({self.scope})"

    def get(self, kind: str, name: str) -> bytes | None:
        check_record_name(kind, name)
        try:
            secret = self.core.read_namespaced_secret(
                secret_name(self.scope, kind, name), self.namespace, _request_timeout=TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise OSError(f"Kubernetes API: {exc.status} {exc.reason}") from None
        return base64.b64decode((secret.data or {}).get("record", ""))

    def put(self, kind: str, name: str, data: bytes) -> None:
        with _reachable():
            self._put(kind, name, data)

    def delete(self, kind: str, name: str) -> None:
        with _reachable():
            self._delete(kind, name)

    def _put(self, kind: str, name: str, data: bytes) -> None:
        check_record_name(kind, name)
        body: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": secret_name(self.scope, kind, name), "namespace": self.namespace,
                         "labels": {KIND_LABEL: kind, SCOPE_LABEL: self.scope,
                                    "app.kubernetes.io/managed-by": "qkms"},
                         "annotations": {ADDRESS_ANNOTATION: f"{kind}/{name}"}},
            "data": {"record": base64.b64encode(data).decode()},
        }
        # Records are mostly written once (a new key or version): create first, and
        # replace only when it exists (a catalog update), so a new record costs one call.
        try:
            self.core.create_namespaced_secret(self.namespace, body, _request_timeout=TIMEOUT)
            return
        except ApiException as exc:
            if exc.status != 409:
                raise OSError(f"Kubernetes API: {exc.status} {exc.reason}") from None
        try:
            self.core.replace_namespaced_secret(body["metadata"]["name"], self.namespace, body,
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

    def _listing(self, selector: str) -> list[Any]:
        return list_pages(self.core.list_namespaced_secret, self.namespace,
                          label_selector=selector)

    def list(self, kind: str) -> list[str]:
        names = []
        for item in self._listing(f"{KIND_LABEL}={kind},{SCOPE_LABEL}={self.scope}"):
            address = (item.metadata.annotations or {}).get(ADDRESS_ANNOTATION, "")
            if address.startswith(f"{kind}/"):
                names.append(address[len(kind) + 1:])
        return sorted(names)

    def kinds(self) -> list[str]:
        return sorted({(i.metadata.labels or {}).get(KIND_LABEL, "")
                       for i in self._listing(f"{KIND_LABEL},{SCOPE_LABEL}={self.scope}")}
                - {""})


def load_or_create_kek_secret(core: client.CoreV1Api, namespace: str,
                              name: str = KEK_SECRET) -> bytes:
    """A 32-byte key from its Secret (the master key; the backup key), made on first use."""
    try:
        secret = core.read_namespaced_secret(name, namespace, _request_timeout=TIMEOUT)
        return base64.b64decode(secret.data["master.key"])
    except ApiException as exc:
        if exc.status != 404:
            raise
    kek = secrets.token_bytes(32)
    body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"app.kubernetes.io/managed-by": "qkms"}},
            "data": {"master.key": base64.b64encode(kek).decode()}}
    try:
        core.create_namespaced_secret(namespace, body, _request_timeout=TIMEOUT)
    except ApiException as exc:
        if exc.status != 409:  # another replica won the race: use its key
            raise
        return load_or_create_kek_secret(core, namespace, name)
    return kek
