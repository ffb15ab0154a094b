"""Each audit writer's latest checkpoint, published in the cluster as an anchor.

A replica's audit log lives on its own volume, which whoever holds that volume can cut back
to an earlier checkpoint or rebuild under a fresh key. So every replica publishes its own
writers' latest checkpoints where the volume's holder cannot rewind them: the ConfigMap
``qkms-audit-anchors`` in the operator's namespace, one key per writer,
``<environment>.<writer>`` (the chain's folder, ``QKMS_AUDIT_WRITER``: the pod name), whose
value is an anchor line, ``<size> <checkpoint CID>``. ``qkms audit verify --anchor
kube:KUBECONFIG`` compares each local chain with its entry (audit/anchors.py).

A ConfigMap rather than the KeyPolicy status: an environment may run without a KeyPolicy,
the verifier reads one object next to the pinned key, and the operator already holds
exactly the verbs it needs (get, create, update on ConfigMaps: no new grant). Each replica
rewrites only its own keys; a concurrent write by another replica is a 409 conflict, and the
write is retried on the fresh object, so no replica's entry is lost.

Publishing is rate-limited: every ``QKMS_ANCHOR_SECONDS`` (5) at most one write, and only
when a writer has a checkpoint newer than the one published.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from qkms.model.names import AUDIT_ANCHORS

log = logging.getLogger("key-management:operator")
TIMEOUT = 10


def latest(services: Iterable[Any]) -> dict[str, str]:
    """``<environment>.<writer>`` -> ``<size> <CID>`` of each open chain's latest checkpoint."""
    found = {}
    for service in services:
        chain = service.audit
        checkpoint = getattr(chain, "last_checkpoint", None)
        root = getattr(chain, "root", None)
        if checkpoint is not None and root is not None:
            found[f"{service.environment.value}.{root.name}"] = \
                f"{checkpoint.size} {checkpoint.cid_text}"
    return found


class AnchorPublisher:
    """Writes what changed since the last successful write; the rest is already there."""

    def __init__(self, core: Any, namespace: str) -> None:
        self.core = core
        self.namespace = namespace
        self.published: dict[str, str] = {}

    async def publish(self, anchors: Mapping[str, str]) -> bool:
        """Write the entries that changed; True when something was written."""
        changed = {k: v for k, v in anchors.items() if self.published.get(k) != v}
        if not changed:
            return False
        await asyncio.to_thread(self._write, changed)
        self.published.update(changed)
        return True

    def _write(self, changed: Mapping[str, str]) -> None:
        core = self.core
        for _ in range(5):  # another replica writes its own entries meanwhile
            try:
                existing = core.read_namespaced_config_map(AUDIT_ANCHORS, self.namespace,
                                                           _request_timeout=TIMEOUT)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                body = {"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": AUDIT_ANCHORS, "namespace": self.namespace},
                        "data": dict(changed)}
                try:
                    core.create_namespaced_config_map(self.namespace, body,
                                                      _request_timeout=TIMEOUT)
                    return
                except ApiException as conflict:
                    if conflict.status != 409:
                        raise
                    continue
            existing.data = {**(existing.data or {}), **changed}
            try:
                core.replace_namespaced_config_map(AUDIT_ANCHORS, self.namespace, existing,
                                                   _request_timeout=TIMEOUT)
                return
            except ApiException as conflict:
                if conflict.status != 409:
                    raise
        raise OSError(f"ConfigMap {self.namespace}/{AUDIT_ANCHORS} kept changing")


async def publish_forever(publisher: AnchorPublisher, services: Callable[[], Iterable[Any]],
                          interval: float) -> None:
    """Every `interval` seconds (``QKMS_ANCHOR_SECONDS``), publish the checkpoints that are
    new."""
    while True:
        await asyncio.sleep(interval)
        await publish_once(publisher, services)


async def publish_once(publisher: AnchorPublisher, services: Callable[[], Iterable[Any]]
                       ) -> None:
    try:
        await publisher.publish(latest(services()))
    except Exception as exc:  # the API is away: the same anchors next time
        log.warning("could not publish audit checkpoints to ConfigMap %s/%s: %s",
                    publisher.namespace, AUDIT_ANCHORS, getattr(exc, "reason", None) or exc)
