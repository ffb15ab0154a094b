"""The operator's entry point for Kopf (``kopf run -m qkms.k8s.handlers``, or
``qkms operator``): Kopf's settings, the one runtime and the data plane at startup (kept
on Kopf's ``memo``, which every handler gets), the background loops behind the handlers,
and the controllers, one per concern:

- keys.py: ManagedKeys (reconcile, a daemon per key, the finalizer);
- policies.py: KeyPolicies (re-plan every key of the environment);
- backups.py: each KeyPolicy's scheduled backups and audit retention;
- projections.py: drifted projections restored;
- issuers.py: the cert-manager issuer (KeyIssuer, ClusterKeyIssuer, CertificateRequests).
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime
from typing import Any

import kopf

from qkms.config import OperatorConfig
from qkms.model.names import FINALIZER, KOPF_PREFIX

from . import audit_anchors, dataplane
from .kube_api import LIST_CHUNK
from .projections import PROJECTED_SELECTOR, WATCHED_BY_LABEL
from .runtime import OperatorRuntime, runtime_of

log = logging.getLogger("key-management:operator")


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Kopf's settings; then, once, the ``OperatorConfig`` (``qkms operator`` puts it on
    the memo; ``kopf run`` reads it here), the runtime, the data plane and the background
    loops, all kept on ``memo``."""
    config: OperatorConfig = memo.get("config") or OperatorConfig.from_env()
    settings.persistence.finalizer = FINALIZER
    # Kopf's own annotations get a prefix of their own: Kopf leaves every annotation under
    # its storage prefix out of the diff, and the user's qkms.io/rotate must trigger updates.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-configuration")
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.chunk_size = LIST_CHUNK
    # One ClusterKopfPeering ("qkms") elects the reconciler in every mode: serving a few
    # namespaces does not make Kopf use per-namespace KopfPeerings (and their CRD).
    settings.peering.clusterwide = True
    for resource in WATCHED_BY_LABEL:
        settings.watching.label_selectors[resource] = PROJECTED_SELECTOR
    # How long a dead replica's peering record blocks the others (Kopf's default: 60 s).
    settings.peering.lifetime = config.peering_lifetime
    if "runtime" in memo:  # a startup handler retried after the runtime was made
        return
    memo.config = config
    if config.workers > 1 and config.api_listen:  # before prometheus_client is imported
        from qkms.server.workers import metrics_folder

        memo.remove_metrics = metrics_folder(os.environ)  # type: ignore[arg-type]
    memo.runtime = runtime = await asyncio.to_thread(OperatorRuntime.from_env, config)
    memo.data_plane = await dataplane.start(runtime, config)
    memo.anchors = audit_anchors.AnchorPublisher(runtime.kube.core, runtime.namespace)
    memo.background = [
        asyncio.create_task(sweep_intents_forever(runtime, config.intent_sweep_seconds),
                            name="qkms-intents"),
        asyncio.create_task(announce_forever(runtime, config.announce_seconds),
                            name="qkms-announcer"),
        asyncio.create_task(audit_anchors.publish_forever(
            memo.anchors, runtime.registry.all, config.anchor_seconds),
            name="qkms-audit-anchors")]


async def announce_forever(runtime: OperatorRuntime, interval: float) -> None:
    """Post the Events the audit chain has and the cluster has not (k8s/announcer.py):
    every few seconds, so within seconds of the API coming back after an outage."""
    while True:
        await asyncio.sleep(interval)
        try:
            await runtime.announcer.catch_up(runtime.registry.all(), datetime.now(UTC))
        except Exception as exc:  # the API is away: the same entries next time
            log.debug("announcing from the audit chain: %s", type(exc).__name__)


async def sweep_intents_forever(runtime: OperatorRuntime, interval: float) -> None:
    """Resolve what a killed replica left half-made (store/intents.py): soon after start,
    once the first keys' environments are open, then every QKMS_INTENT_SWEEP_SECONDS."""
    await asyncio.sleep(min(interval, 5.0))
    while True:
        await runtime.registry.resolve_intents()
        await asyncio.sleep(interval)


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    """Sign a last audit checkpoint, publish it (k8s/audit_anchors.py) and release the
    audit logs."""
    for task in memo.get("background", []):
        task.cancel()
    if memo.get("data_plane") is not None:  # its workers close their own chains
        await memo.data_plane.cleanup()
    if "runtime" in memo:
        services = runtime_of(memo).registry.all()
        for service in services:
            await service.close()
        if "anchors" in memo:
            await audit_anchors.publish_once(memo.anchors, lambda: services)
    if "remove_metrics" in memo:
        memo.remove_metrics()


# The controllers, one per concern: importing them registers their handlers with Kopf.
from . import backups, issuers, keys, policies, projections  # noqa: E402, F401
