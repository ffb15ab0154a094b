"""Kopf handlers: each translates an event into one runtime call and nothing more.

- ManagedKey create/update/resume: reconcile now.  A retryable provider fault
  raises ``TemporaryError`` (Kopf backs off); a bad spec is reported in the
  status and an Event and is not retried (``PermanentError``).
- A daemon per ManagedKey sleeps until the key next needs attention (rotation,
  end of grace, destruction) and reconciles then: no polling, so 1,000 idle
  keys cost 1,000 sleeping tasks.
- ManagedKey deletion runs the finalizer (Retain audits, Delete schedules).
- KeyPolicy changes re-plan every key of that environment.
- Projected Secrets/ConfigMaps that drift are restored.
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime
from typing import Any

import kopf

from qkms.errors import InvalidInputError
from qkms.model.names import (
    FINALIZER,
    GROUP,
    KEY_LABEL,
    KOPF_PREFIX,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    VERSION,
)
from qkms.model.resources import parse_key_policy
from qkms.reconcile.retries import Fault, retry_delay

from .runtime import OperatorRuntime, ProjectionTarget

MANAGED_KEYS = (GROUP, VERSION, "managedkeys")
KEY_POLICIES = (GROUP, VERSION, "keypolicies")
# A Kopf label filter: values are strings or kopf.PRESENT (Kopf does not export the type).
PROJECTED: dict[str, Any] = {MANAGED_BY_LABEL: MANAGED_BY, KEY_LABEL: kopf.PRESENT}
# The same filter as a server-side label selector: Kopf lists and watches only qkms's
# projections, never every Secret and ConfigMap of the cluster (its labels= filter on a
# handler is applied client-side, after the API has sent everything).
PROJECTED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY},{KEY_LABEL}"
WATCHED_BY_LABEL = (("v1", "secrets"), ("v1", "configmaps"))
# Lists are paged (limit/continue): a cluster with many ManagedKeys is read in chunks.
LIST_CHUNK = 500
RUNTIME: dict[str, OperatorRuntime] = {}
BACKGROUND: list[asyncio.Task[None]] = []


def runtime() -> OperatorRuntime:
    return RUNTIME["runtime"]


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
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
    settings.peering.lifetime = int(os.environ.get("QKMS_PEERING_LIFETIME", "60"))
    if "runtime" not in RUNTIME:
        RUNTIME["runtime"] = await asyncio.to_thread(OperatorRuntime.from_env)
        await RUNTIME["runtime"].start_api()
        BACKGROUND.append(asyncio.create_task(sweep_intents_forever(), name="qkms-intents"))
        BACKGROUND.append(asyncio.create_task(announce_forever(), name="qkms-announcer"))


async def announce_forever() -> None:
    """Post the Events the audit chain has and the cluster has not (k8s/announcer.py):
    every few seconds, so within seconds of the API coming back after an outage."""
    interval = float(os.environ.get("QKMS_ANNOUNCE_SECONDS", "3"))
    while True:
        await asyncio.sleep(interval)
        try:
            await runtime().announcer.catch_up(runtime().registry.all(), datetime.now(UTC))
        except Exception as exc:  # the API is away: the same entries next time
            logging.getLogger("key-management:operator").debug(
                "announcing from the audit chain: %s", type(exc).__name__)


async def sweep_intents_forever() -> None:
    """Resolve what a killed replica left half-made (store/intents.py): soon after start,
    once the first keys' environments are open, then every QKMS_INTENT_SWEEP_SECONDS."""
    interval = float(os.environ.get("QKMS_INTENT_SWEEP_SECONDS", "30"))
    await asyncio.sleep(min(interval, 5.0))
    while True:
        await runtime().registry.resolve_intents()
        await asyncio.sleep(interval)


@kopf.on.cleanup()
async def shutdown(**_: Any) -> None:
    """Sign a last audit checkpoint and release the audit logs."""
    for task in BACKGROUND:
        task.cancel()
    if "runtime" in RUNTIME:
        for service in runtime().registry.all():
            await service.close()


@kopf.on.resume(*MANAGED_KEYS)
@kopf.on.create(*MANAGED_KEYS)
@kopf.on.update(*MANAGED_KEYS)
async def reconcile_key(body: kopf.Body, retry: int, **_: Any) -> None:
    try:
        outcome = await runtime().reconcile(body)
    except Exception as exc:  # the API (or the records kept on it) went away mid-way
        raise kopf.TemporaryError(f"{type(exc).__name__}: {str(exc)[:200]}",
                                  delay=retry_delay(retry, Fault.API)) from exc
    if outcome.retry:
        raise kopf.TemporaryError(outcome.status.conditions[-1].message,
                                  delay=retry_delay(retry, Fault.PROVIDER))
    if outcome.status.phase == "Failed":
        raise kopf.PermanentError(next(c.message for c in outcome.status.conditions
                                       if c.type == "Ready"))


@kopf.daemon(*MANAGED_KEYS, cancellation_timeout=5.0, initial_delay=1.0)
async def key_clock(body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any) -> None:
    ident = (body["metadata"]["namespace"], body["metadata"]["name"])
    waker = runtime().wakers.setdefault(ident, asyncio.Event())
    # The create/resume handler reconciles first and then wakes us: start by planning.
    delay = runtime().next_delay(ident)
    failures = 0
    while not stopped:
        waker.clear()
        stop_wait = asyncio.ensure_future(stopped.wait())
        wake_wait = asyncio.ensure_future(waker.wait())
        await asyncio.wait({stop_wait, wake_wait}, timeout=delay,
                           return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        wake_wait.cancel()
        if stopped:
            break
        if waker.is_set():  # a handler just reconciled: only re-plan the sleep
            delay = runtime().next_delay(ident)
            continue
        try:
            outcome = await runtime().reconcile(body)
            delay = (retry_delay(failures, Fault.PROVIDER) if outcome.retry
                     else outcome.requeue_after or 3600.0)
            failures = failures + 1 if outcome.retry else 0
        except Exception:  # the daemon must survive a transient API error
            logging.getLogger("key-management:operator").exception("timer for %s failed", ident)
            delay = retry_delay(failures, Fault.API)
            failures += 1
    runtime().wakers.pop(ident, None)


@kopf.on.delete(*MANAGED_KEYS)
async def finalize_key(body: kopf.Body, **_: Any) -> None:
    await runtime().delete(body)


@kopf.on.resume(*KEY_POLICIES)
@kopf.on.create(*KEY_POLICIES)
@kopf.on.update(*KEY_POLICIES)
async def replan_policy(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    generation = body["metadata"].get("generation")
    try:
        policy = parse_key_policy(body)
    except InvalidInputError as exc:  # reported on the policy, not retried; keys ignore it
        patch.status["conditions"] = [_ready(False, "InvalidSpec", str(exc), generation)]
        patch.status["observedGeneration"] = generation
        raise kopf.PermanentError(str(exc)) from None
    runtime().kube.forget_cache()
    keys = await runtime().keys_under_policy(policy.spec.environment)
    for key in keys:
        await runtime().reconcile(key, fresh=True)  # listed earlier: reconcile it as it is now
    patch.status["keys"] = len(keys)
    patch.status["conditions"] = [_ready(True, "PolicyAccepted",
                                         f"governs {len(keys)} ManagedKey(s)", generation)]
    patch.status["observedGeneration"] = generation


def _ready(ok: bool, reason: str, message: str, generation: int | None) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return {"type": "Ready", "status": "True" if ok else "False", "reason": reason,
            "message": message, "lastTransitionTime": now, "observedGeneration": generation}


@kopf.timer(*KEY_POLICIES, interval=float(os.environ.get("QKMS_BACKUP_INTERVAL_SECONDS",
                                                            "86400")),
            initial_delay=float(os.environ.get("QKMS_BACKUP_DELAY_SECONDS", "300")))
async def scheduled_backup(body: kopf.Body, logger: Any, **_: Any) -> None:
    """Daily (QKMS_BACKUP_INTERVAL_SECONDS) encrypted backups where backupPolicy.enabled."""
    try:
        policy = parse_key_policy(body)
    except InvalidInputError:
        return  # the policy handler reports it
    if policy.spec.backup_policy.enabled:
        logger.info(await runtime().backup(policy))


@kopf.timer(*KEY_POLICIES, interval=3600.0, initial_delay=60.0)
async def audit_retention(body: kopf.Body, **_: Any) -> None:
    """Hourly: prune the environment's audit log to the policy's retention period."""
    policy = parse_key_policy(body)
    service = await runtime().service(policy.spec.environment)
    await service.prune_audit()


@kopf.on.event("", "v1", "secrets", labels=PROJECTED)
@kopf.on.event("", "v1", "configmaps", labels=PROJECTED)
async def repair_projection(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    meta = body["metadata"]
    if meta.get("deletionTimestamp") and event.get("type") != "DELETED":
        return
    await runtime().repair(ProjectionTarget(meta["namespace"], body["kind"], meta["name"]))


from . import issuers  # noqa: E402, F401 - registers the cert-manager issuer handlers
