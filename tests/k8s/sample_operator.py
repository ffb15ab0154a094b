"""A throwaway Kopf operator that proves the Kubernetes test harness, not qkms itself.

It does, on the emulated API, the kinds of calls the real operator makes: Kopf's own
finalizer, progress and status patches, an Event (generateName), reading a Namespace's
labels, and a ConfigMap owned by the ManagedKey through the kubernetes client.

A test holds a handler mid-way by creating ``$SAMPLE_GATE_DIR/<name>.<create|delete>.hold``:
the handler then appends to ``<name>.<create|delete>.started`` and waits until the hold
file is gone, so the test can SIGKILL the operator at a known point.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import kopf
import kubernetes

RESOURCE = ("qkms.io", "v1alpha1", "managedkeys")
FINALIZER = "qkms.io/sample-finalizer"


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Settings that keep tests fast and close to what the qkms operator should use."""
    settings.persistence.finalizer = FINALIZER
    settings.posting.level = logging.INFO  # kopf.info() events are posted
    settings.posting.loggers = False  # Kopf 1.45's default: no Events from log lines
    settings.watching.server_timeout = 10  # the API closes watches; Kopf resumes by RV
    settings.watching.client_timeout = 20
    settings.watching.connect_timeout = 2
    settings.networking.connect_timeout = 2
    settings.networking.request_timeout = 10
    settings.networking.error_backoffs = [0.1, 0.2, 0.5, 1.0]  # reconnect fast after restarts
    kubernetes.config.load_kube_config()


def core() -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api()


async def gate(name: str, step: str) -> None:
    """Block while the test holds this step; record each time the step starts."""
    gate_dir = os.environ.get("SAMPLE_GATE_DIR")
    if not gate_dir:
        return
    hold = Path(gate_dir) / f"{name}.{step}.hold"
    with (Path(gate_dir) / f"{name}.{step}.started").open("a") as marker:
        marker.write(f"{os.getpid()}\n")
    while hold.exists():
        await asyncio.sleep(0.05)


@kopf.on.create(*RESOURCE)
async def create_key(body: kopf.Body, name: str, namespace: str, patch: kopf.Patch,
                     **_: Any) -> None:
    await gate(name, "create")
    ns = await asyncio.to_thread(core().read_namespace, namespace)
    environment = (ns.metadata.labels or {}).get("qkms.io/environment", "unknown")
    config_map: dict[str, Any] = {"metadata": {"name": f"{name}-info"},
                                  "data": {"environment": environment}}
    kopf.adopt(config_map, owner=body)
    try:
        await asyncio.to_thread(core().create_namespaced_config_map, namespace, config_map)
    except kubernetes.client.ApiException as exc:  # a retry after a crash finds it there
        if exc.status != 409:
            raise
    kopf.info(body, reason="KeyCreated", message=f"created for {environment}")
    patch.status["phase"] = "Ready"
    patch.status["environment"] = environment


@kopf.on.delete(*RESOURCE)
async def delete_key(body: kopf.Body, name: str, namespace: str, **_: Any) -> None:
    await gate(name, "delete")
    try:
        await asyncio.to_thread(core().delete_namespaced_config_map, f"{name}-info", namespace)
    except kubernetes.client.ApiException as exc:
        if exc.status != 404:
            raise
    tombstone = {"metadata": {"name": "sample-tombstones"}, "data": {name: "deleted"}}
    try:
        await asyncio.to_thread(core().create_namespaced_config_map, namespace, tombstone)
    except kubernetes.client.ApiException as exc:
        if exc.status != 409:
            raise
        await asyncio.to_thread(core().patch_namespaced_config_map, "sample-tombstones",
                                namespace, {"data": {name: "deleted"}})
    kopf.info(body, reason="KeyDeleted", message="the finalizer ran")
