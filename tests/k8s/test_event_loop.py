"""The operator's event loop never waits for the Kubernetes API.

The operator's runtime (the same objects `qkms operator` builds: OperatorRuntime, its Kube
client and the Secrets-backed record stores, logged in as the operator's ServiceAccount)
talks to the real kube-apiserver through a proxy that holds every request for ``DELAY``
seconds, as a loaded control plane would. Meanwhile a probe task sleeps 20 ms at a time on
the same loop and records how late it wakes. The work: reconciling ManagedKeys (a new
environment's service made, keys created), signing with a catalog TTL of zero (every use
re-reads the key's record), asking for a key that does not exist (the catalog is re-read),
and a second environment's service.

A Kubernetes call made on the loop stalls it for at least ``DELAY``; the bound is half of
it, so the check does not depend on how fast this machine is, only on the loop staying free.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from contextlib import suppress
from pathlib import Path

import pytest
import yaml
from kubernetes import config as k8s_config

from qkms.config import Settings
from qkms.errors import KeyNotFoundError
from qkms.k8s.kube_api import Kube
from qkms.k8s.runtime import OperatorRuntime
from qkms.model.enums import Environment
from tests.support.controlplane import write_kubeconfig

DELAY = 0.3
NS = "payments"


class SlowProxy:
    """A TCP proxy to the API server that holds each chunk a client sends for `delay` s
    (TLS passes through untouched: the server's certificate names 127.0.0.1)."""

    def __init__(self, port: int, delay: float) -> None:
        self.target = port
        self.delay = delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pump, args=(client, server, self.delay),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, 0.0),
                             daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, delay: float) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                if delay:
                    time.sleep(delay)
                sink.sendall(data)
        for end in (source, sink):
            with suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closed = True
        self.listener.close()


class LoopProbe:
    """How late a 20 ms sleep wakes up, on the loop that runs the operator's work."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(0.02)
            self.lags.append(loop.time() - start - 0.02)

    def __enter__(self) -> LoopProbe:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    @property
    def worst(self) -> float:
        return max(self.lags, default=0.0)


def managed_key(name: str) -> dict:
    return {"apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"usage": "SIGNING", "algorithm": "Ed25519", "owner": "loop"}}


@pytest.fixture
def slow_api(control_plane, operator_kubeconfig: Path, tmp_path: Path):
    """A kubeconfig of the operator's ServiceAccount that reaches the API through the
    slow proxy."""
    proxy = SlowProxy(control_plane.port, DELAY)
    token = yaml.safe_load(operator_kubeconfig.read_text())["users"][0]["user"]["token"]
    path = write_kubeconfig(tmp_path / "slow.kubeconfig", f"https://127.0.0.1:{proxy.port}",
                            control_plane.pki.ca_path, token=token, namespace="qkms-system")
    try:
        yield path
    finally:
        proxy.close()


async def test_kubernetes_calls_never_stall_the_event_loop(kube, slow_api, tmp_path):
    await kube.create("namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                     "metadata": {"name": NS,
                                                  "labels": {"qkms.io/environment": "dev"}}})
    bodies = [await kube.create("managedkeys", managed_key(f"loop-{i}"), NS) for i in range(3)]
    settings = Settings(data_dir=tmp_path / "data", catalog_ttl=0.0)
    api = k8s_config.new_client_from_config(config_file=str(slow_api))
    # Built in a thread, as the operator's startup handler builds it.
    runtime = await asyncio.to_thread(OperatorRuntime, settings, Kube(api),
                                      namespace="qkms-system")
    try:
        with LoopProbe() as probe:
            for body in bodies:
                outcome = await runtime.reconcile(body)
                assert outcome.status.phase not in ("Failed",), outcome.status
            service = await runtime.service(Environment.DEV)
            for i in range(10):  # catalog TTL 0: every use re-reads the key's record
                await service.use_key(f"{NS}/loop-{i % 3}", "SIGN", b"tick")
            with pytest.raises(KeyNotFoundError):  # not in the catalog: it is re-read
                await service.use_key(f"{NS}/never-made", "SIGN", b"tick")
            await runtime.service(Environment.STAGING)  # another environment's store
        assert len(probe.lags) > 20, "the probe hardly ran"
        assert probe.worst < DELAY / 2, (
            f"the event loop stalled {probe.worst:.3f}s (a Kubernetes call takes "
            f"{DELAY}s here); lags over 50 ms: "
            f"{sorted(round(lag, 3) for lag in probe.lags if lag > 0.05)}")
    finally:
        for service in runtime.registry.all():
            await service.close()
            with suppress(AttributeError):
                service.sealed.records.close()
