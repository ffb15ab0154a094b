"""The data plane of an operator replica: every replica serves it; only reconciliation is
single-active. Wired here, at the edge, from the ``OperatorConfig``: the listen address,
the TLS files (or qkms's own CA), and ServiceAccount-token authentication (KubeAuth).

With ``QKMS_DATA_PLANE_WORKERS`` above 1 the replica serves from that many worker
processes on its one port (SO_REUSEPORT, ``server/workers.py``), as ``qkms serve`` does;
the operator process keeps Kopf and the reconciler. Each worker (``qkms operator
--worker-fd``) is a replica's data plane without Kopf: its own runtime and Secret mirrors
(whose watch carries another process's rotation or revocation to it at once, before the
catalog TTL), its own audit writer (``<pod>-w<n>``, whose checkpoints it anchors in
``qkms-audit-anchors`` itself) and its own token reviews; metrics are summed over every
process of the pod.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qkms.config import OperatorConfig

from .runtime import OperatorRuntime

TLS = tuple[Path, Path, Path | None]


@dataclass
class Serving:
    """The data plane (this process's server, or its supervised workers) and the private
    folder of qkms's own certificate files, removed when it stops."""

    server: Any
    folder: Path | None

    async def cleanup(self) -> None:
        try:
            await self.server.cleanup()
        finally:
            if self.folder is not None:
                shutil.rmtree(self.folder, ignore_errors=True)


async def start(runtime: OperatorRuntime, config: OperatorConfig) -> Serving | None:
    """Serve the data plane on ``QKMS_API_LISTEN`` (0.0.0.0:8443; empty: none), from this
    process or from ``config.workers`` worker processes; returns what ``cleanup`` stops."""
    if not config.api_listen:
        return None
    from qkms.server.app import start_data_plane

    tls, folder = await tls_files(runtime, config)
    try:
        if config.workers > 1:
            return Serving(start_workers(runtime, config, tls), folder)
        auth = kube_auth(runtime, config)
        return Serving(await start_data_plane(runtime, runtime.registry, auth, auth,
                                              config.api_listen, tls,
                                              metrics_token=config.metrics_token), folder)
    except BaseException:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def kube_auth(runtime: OperatorRuntime, config: OperatorConfig) -> Any:
    """Tokens must be minted for qkms (a projected ServiceAccount token with this audience):
    a token for the API server, or for anything else, is refused."""
    from .auth import KubeAuth

    return KubeAuth(runtime.kube.api, ttl=config.auth_cache_seconds,
                    audiences=list(config.audiences))


def start_workers(runtime: OperatorRuntime, config: OperatorConfig, tls: TLS | None) -> Any:
    """``config.workers`` processes of ``qkms operator --worker-fd`` on the listen port, given
    this process's certificate files and namespaces; this process still counts the
    reconciler's audit entries into the pod's metrics."""
    from qkms.server.metrics import Metrics, process_dead
    from qkms.server.workers import Supervised, WorkerPool, reuseport_socket

    host, _, port = config.api_listen.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - as QKMS_API_LISTEN asks
    sock = reuseport_socket(host, int(port))  # a busy port fails here, in the startup
    env = {**os.environ,  # forwarded whole to the workers, as WorkerPool's default
           "QKMS_WATCH_NAMESPACES": ",".join(config.watch_namespaces)}
    if tls is not None:
        env.update(QKMS_TLS_CERT=str(tls[0]), QKMS_TLS_KEY=str(tls[1]))
        if tls[2] is not None:
            env["QKMS_TLS_CLIENT_CA"] = str(tls[2])
    pool = WorkerPool([sys.executable, "-m", "qkms", "operator"], host, int(port),
                      config.workers, env=env, writer=runtime.registry.settings.audit_writer,
                      exited=process_dead)
    pool.start(sock)
    metrics = Metrics()
    runtime.registry.on_new.append(metrics.attach)
    for service in runtime.registry.all():
        metrics.attach(service)
    return Supervised.start(pool, metrics, runtime.registry, asyncio.Event(), 5.0)


async def run_worker(fd: int) -> None:
    """One data-plane worker of a replica (``qkms operator --worker-fd``): serve on the
    parent's socket until SIGTERM or the parent is gone; then sign a last checkpoint and
    anchor it."""
    from qkms.server.app import start_data_plane
    from qkms.server.metrics import Metrics
    from qkms.server.workers import publish_metrics, stop_on_signals, until_stopped

    from . import audit_anchors

    config = OperatorConfig.from_env()
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    runtime = await asyncio.to_thread(OperatorRuntime.from_env, config)
    registry = runtime.registry
    metrics = Metrics()
    registry.on_new.append(metrics.attach)
    auth = kube_auth(runtime, config)
    api = await start_data_plane(runtime, registry, auth, auth, config.api_listen,
                                 given_files(config),  # the parent's (start_workers)
                                 sock=sock, metrics=metrics, quiet=True,
                                 metrics_token=config.metrics_token)
    stop = stop_on_signals()
    anchors = audit_anchors.AnchorPublisher(runtime.kube.core, runtime.namespace)
    background = [asyncio.create_task(publish_metrics(metrics, registry, stop, 5.0)),
                  asyncio.create_task(audit_anchors.publish_forever(
                      anchors, registry.all, config.anchor_seconds))]
    try:
        await until_stopped(stop, config.worker_parent)
    finally:
        stop.set()
        background[1].cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await api.cleanup()
        services = registry.all()
        for service in services:
            await service.close()
        await audit_anchors.publish_once(anchors, lambda: services)


async def tls_files(runtime: OperatorRuntime, config: OperatorConfig
                    ) -> tuple[TLS | None, Path | None]:
    """The data plane's certificate: files (``QKMS_TLS_CERT``/``KEY``, cert-manager's),
    else ``QKMS_TLS=auto`` (the manifests' default: qkms's own CA, qkms/k8s/tls.py), whose
    files are written to a private folder (returned too: ``Serving`` removes it).
    Plain HTTP only on loopback (``QKMS_TLS=off``, or unset there: config.py checks)."""
    if (given := given_files(config)) is not None:
        return given, None
    if config.tls == "off":
        return None, None
    from . import tls

    files = await asyncio.to_thread(tls.load_or_create_tls, runtime.kube.core,
                                    runtime.namespace)
    runtime.ca_pem = files["ca.crt"]
    await runtime.publish_ca(runtime.namespace)
    folder = private_folder(Path(tempfile.gettempdir()))
    for name in ("tls.crt", "tls.key"):
        path = folder / name
        path.touch(mode=0o600)
        path.write_bytes(files[name])
    return (folder / "tls.crt", folder / "tls.key", config.tls_client_ca), folder


def given_files(config: OperatorConfig) -> TLS | None:
    """The certificate files named in the environment (``QKMS_TLS_CERT``/``KEY``), if any."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    return config.tls_cert, config.tls_key, config.tls_client_ca


FOLDER_PREFIX = "qkms-tls-"


def private_folder(base: Path) -> Path:
    """A new 0700 folder under ``base`` named by this process.  Folders an earlier process
    of this user left there first go: one killed before its cleanup (a container restart
    keeps the pod's /tmp, an emptyDir), so that no copy of the key outlives its process.
    A folder of a live process, of another user, or a symlink is left alone."""
    for old in base.glob(f"{FOLDER_PREFIX}*"):
        pid = _pid_in(old.name)
        try:
            if pid is None or old.is_symlink() or old.stat().st_uid != os.getuid():
                continue
        except OSError:  # gone meanwhile
            continue
        if pid == os.getpid() or not _alive(pid):  # our pid: an earlier run in this pod
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-", dir=base))


def _pid_in(name: str) -> int | None:
    pid, sep, _ = name.removeprefix(FOLDER_PREFIX).partition("-")
    return int(pid) if sep and pid.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True
