"""Pods of the real API server, run on this machine: what a kubelet would do with them.

The test control plane has no nodes. Its workload controllers (StatefulSet, ReplicaSet,
Deployment, disruption) run in kube-controller-manager, so applying manifests/ or
installing the chart makes real Pods and PersistentVolumeClaims in the API, admitted by
PodSecurity. :class:`LocalPod` then starts one such Pod the way a kubelet would, as local
processes, taking everything from the Pod object as the API server holds it:

- the init containers, in order, then the container, with their ``command``/``args``;
- the environment: plain values, ``fieldRef`` (the downward API: metadata.name,
  metadata.namespace, ...) and ``secretKeyRef``/``configMapKeyRef`` read from the API;
- the volumes: a ``persistentVolumeClaim`` is a folder named after the claim (so two pods
  that name one claim share one folder, as they would share one volume), an ``emptyDir``
  a folder of its own, a ``secret`` a folder of its keys read from the API at start;
  environment values and arguments that name a mount path are rewritten to the folder
  (nothing runs in a mount namespace here), and a volume at ``/tmp`` is the process's
  ``TMPDIR``;
- the credentials: a real TokenRequest token of the Pod's ServiceAccount, handed over as a
  kubeconfig (in a pod, the projected token and ``load_incluster_config``);
- ports: each containerPort gets a free port on 127.0.0.1.

:meth:`LocalPod.mark_ready` writes the Pod's status as the kubelet reports it (Running,
Ready), so the disruption controller and the eviction API see a live pod.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from qkms.client import QkmsClient
from tests.install.helpers import NAMESPACE
from tests.support.controlplane import CONTROLLERS, ControlPlane, ControlPlaneError, stop_process
from tests.support.kubeclient import KubeClient, KubeError, eventually
from tests.support.server_process import die_with_parent, free_port
from tests.support.servers import require_server

ROOT = Path(__file__).resolve().parents[2]
WORKLOAD_CONTROLLERS = ("statefulset", "deployment", "replicaset", "disruption")


SELECTOR = "app.kubernetes.io/name=qkms,app.kubernetes.io/component=operator"
APP_NS = "payments"


def kubectl_ok(cp: ControlPlane, *args: str) -> str:
    run = cp.kubectl(*args)
    assert run.returncode == 0, f"kubectl {' '.join(args)}:\n{run.stdout}\n{run.stderr}"
    assert "would violate PodSecurity" not in run.stderr, run.stderr
    return run.stdout


def claim_of(pod: dict[str, Any], volume: str = "audit") -> str:
    (found,) = [v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]
                if v["name"] == volume]
    return found


async def ready_key(kube: KubeClient, name: str, namespace: str = APP_NS,
                    timeout: float = 60) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        body = await kube.get("managedkeys", name, namespace)
        conditions = {c["type"]: c for c in ((body or {}).get("status") or {})
                      .get("conditions", [])}
        return body if conditions.get("Ready", {}).get("status") == "True" else None
    return await eventually(probe, timeout=timeout, what=f"{namespace}/{name} Ready")


async def key_user(cp: ControlPlane, namespace: str = APP_NS, name: str = "checkout",
                   verbs: tuple[str, ...] = ("sign", "verify")) -> str:
    """A workload's token: ServiceAccount `name` with a Role that may use keys."""
    kube = cp.client
    await kube.create("roles", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "key-user", "namespace": namespace},
        "rules": [{"apiGroups": ["qkms.io"], "resources": ["managedkeys"],
                   "verbs": list(verbs)}]}, namespace)
    await kube.create("rolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "key-user", "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "key-user"},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]},
        namespace)
    return await cp.token(namespace, name, audiences=["qkms"])  # as a projected token


async def signing_key(kube: KubeClient, name: str = "signer") -> None:
    await kube.create("namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                     "metadata": {"name": APP_NS,
                                                  "labels": {"qkms.io/environment": "dev"}}})
    await kube.create("managedkeys", {
        "apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
        "metadata": {"name": name, "namespace": APP_NS},
        "spec": {"usage": "SIGNING", "algorithm": "Ed25519", "owner": "checkout"}}, APP_NS)


def local_command(command: list[str]) -> list[str]:
    """The image's programs on this machine: ``qkms`` is ``python -m qkms`` (the console
    script's module), ``python`` this interpreter."""
    head, *rest = command
    if head == "qkms":
        return [sys.executable, "-m", "qkms", *rest]
    if head in ("python", "python3"):
        return [sys.executable, *rest]
    return command


OPERATOR_USER = f"system:serviceaccount:{NAMESPACE}:qkms"


@contextlib.asynccontextmanager
async def workload_control_plane(folder: Path, *, audit_users: tuple[str, ...] = ()
                                 ) -> AsyncIterator[ControlPlane]:
    """A control plane of the test's own whose kube-controller-manager also runs the
    workload controllers (StatefulSet, Deployment, ReplicaSet, disruption): applying
    manifests/ makes Pods and claims. Nothing is installed. With `audit_users`, the API
    server writes an audit log of those users' requests (:func:`audit_log`)."""
    try:
        cp = ControlPlane(folder, controllers=(*CONTROLLERS, *WORKLOAD_CONTROLLERS))
    except ControlPlaneError as exc:
        require_server("the Kubernetes control plane", str(exc))
    if audit_users:
        policy = {"apiVersion": "audit.k8s.io/v1", "kind": "Policy",
                  "omitStages": ["RequestReceived"],
                  "rules": [{"level": "Metadata", "users": list(audit_users)},
                            {"level": "None"}]}
        (folder / "audit-policy.yaml").write_text(json.dumps(policy))
        cp.apiserver.command += [f"--audit-policy-file={folder / 'audit-policy.yaml'}",
                                 f"--audit-log-path={folder / 'audit.log'}",
                                 "--audit-log-format=json", "--audit-log-mode=blocking"]
    try:
        await cp.start()
    except (ControlPlaneError, TimeoutError, KubeError, OSError) as exc:
        await cp.stop()
        require_server("the Kubernetes control plane", f"{exc}\n{cp.logs()}")
    try:
        yield cp
    finally:
        await cp.stop()


async def pods_of(kube: KubeClient, namespace: str, selector: str, count: int,
                  timeout: float = 60) -> list[dict[str, Any]]:
    """The workload's pods once its controller has made `count` of them, sorted by name."""
    async def made() -> list[dict[str, Any]] | None:
        pods = await kube.list("pods", namespace, labels=selector)
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        return sorted(live, key=lambda p: p["metadata"]["name"]) if len(live) == count \
            else None
    return await eventually(made, timeout=timeout, interval=0.2,
                            what=f"{count} pods ({selector}) in {namespace}")


class LocalPod:
    """One Pod of the API server, run as local processes (see the module's docstring)."""

    def __init__(self, cp: ControlPlane, pod: dict[str, Any], volumes: Path,
                 workdir: Path) -> None:
        self.cp = cp
        self.pod = pod
        self.name = pod["metadata"]["name"]
        self.namespace = pod["metadata"]["namespace"]
        self.volumes = volumes
        self.workdir = workdir / self.name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.mounts: dict[str, Path] = {}   # volume name -> folder
        for volume in pod["spec"].get("volumes") or []:
            if "persistentVolumeClaim" in volume:
                folder = volumes / volume["persistentVolumeClaim"]["claimName"]
            elif "emptyDir" in volume:
                folder = self.workdir / "emptydir" / volume["name"]
            elif "secret" in volume:  # written from the API at start (write_secrets)
                folder = self.workdir / "secret" / volume["name"]
            else:
                continue  # the projected ServiceAccount token: a kubeconfig instead
            folder.mkdir(parents=True, exist_ok=True)
            self.mounts[volume["name"]] = folder
        spec = pod["spec"]
        self.ports: dict[int, int] = {
            port["containerPort"]: free_port()
            for c in spec["containers"] for port in c.get("ports") or []}
        self.named_ports: dict[str, int] = {
            port["name"]: self.ports[port["containerPort"]]
            for c in spec["containers"] for port in c.get("ports") or [] if port.get("name")}
        self.proc: subprocess.Popen[bytes] | None = None
        self.kubeconfig: Path | None = None
        self.runs = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}-{self.runs}.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def container(self, name: str | None = None) -> dict[str, Any]:
        spec = self.pod["spec"]
        return next(c for c in spec["containers"] if name in (None, c["name"]))

    def host_path(self, container: dict[str, Any], path: str) -> str:
        """A path inside the container, on this machine (the longest mount that holds it)."""
        for mount in sorted(container.get("volumeMounts") or [],
                            key=lambda m: -len(m["mountPath"])):
            base = mount["mountPath"].rstrip("/")
            if mount["name"] in self.mounts and (path == base or path.startswith(base + "/")):
                return str(self.mounts[mount["name"]]) + path[len(base):]
        return path

    def _rewrite(self, container: dict[str, Any], text: str) -> str:
        text = self.host_path(container, text) if text.startswith("/") else text
        for inside, outside in self.ports.items():
            text = re.sub(rf"(?:0\.0\.0\.0|localhost|127\.0\.0\.1):{inside}\b",
                          f"127.0.0.1:{outside}", text)
        return text

    async def environment(self, container: dict[str, Any]) -> dict[str, str]:
        """The container's environment as the kubelet resolves it, paths made local."""
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            if "secretRef" in source:
                secret = await self.cp.client.get("secrets", source["secretRef"]["name"],
                                                  self.namespace)
                env.update({k: base64.b64decode(v).decode()
                            for k, v in ((secret or {}).get("data") or {}).items()})
        for var in container.get("env") or []:
            if "value" in var:
                env[var["name"]] = self._rewrite(container, var["value"])
                continue
            ref = var["valueFrom"]
            if "fieldRef" in ref:
                value: Any = self.pod
                for part in ref["fieldRef"]["fieldPath"].split("."):
                    value = value[part]
                env[var["name"]] = str(value)
            elif "secretKeyRef" in ref or "configMapKeyRef" in ref:
                kind, key = (("secrets", ref["secretKeyRef"]) if "secretKeyRef" in ref
                             else ("configmaps", ref["configMapKeyRef"]))
                body = await self.cp.client.get(kind, key["name"], self.namespace)
                data = (body or {}).get("data") or {}
                raw = data.get(key["key"], "")
                env[var["name"]] = base64.b64decode(raw).decode() if kind == "secrets" else raw
        return env

    async def process_env(self, container: dict[str, Any]) -> dict[str, str]:
        """This machine's environment for one container's process: a clean PATH and
        Python, the pod's credentials as a kubeconfig, then the container's variables."""
        if self.kubeconfig is None:
            self.kubeconfig = await self.cp.service_account_kubeconfig(
                self.namespace, self.pod["spec"].get("serviceAccountName", "default"),
                self.workdir / "serviceaccount.kubeconfig")
        base = {k: v for k, v in os.environ.items()
                if k in ("PATH", "LANG", "LC_ALL", "PYENV_VERSION", "PYENV_ROOT", "SSL_CERT_FILE")}
        paths = [str(ROOT / "operator"), os.environ.get("PYTHONPATH", "")]
        base.update(KUBECONFIG=str(self.kubeconfig), PYTHONUNBUFFERED="1",
                    PYTHONPATH=os.pathsep.join(filter(None, paths)))
        base.update(await self.environment(container))
        if (tmp := self.host_path(container, "/tmp")) != "/tmp":  # a volume at /tmp
            base.setdefault("TMPDIR", tmp)
        # The data plane listens where the container port says (8443), here a free port.
        if 8443 in self.ports:
            base.setdefault("QKMS_API_LISTEN", f"127.0.0.1:{self.ports[8443]}")
        return base

    def argv(self, container: dict[str, Any]) -> list[str]:
        command = [self._rewrite(container, part) for part in
                   [*(container.get("command") or []), *(container.get("args") or [])]]
        return local_command(command)

    async def run_init_containers(self, timeout: float = 120) -> list[str]:
        """Each init container to completion, in order (a failure fails the pod)."""
        outputs = []
        for init in self.pod["spec"].get("initContainers") or []:
            run = await asyncio.to_thread(
                subprocess.run, self.argv(init), env=await self.process_env(init),
                cwd=self.workdir, capture_output=True, text=True, timeout=timeout)
            assert run.returncode == 0, \
                f"init container {init['name']} of {self.name}:\n{run.stdout}\n{run.stderr}"
            outputs.append(run.stdout.strip())
        return outputs

    async def write_secrets(self) -> None:
        """Each ``secret`` volume's keys as files, as the kubelet projects them (0644)."""
        for volume in self.pod["spec"].get("volumes") or []:
            if "secret" in volume:
                name = volume["secret"]["secretName"]
                secret = await self.cp.client.get("secrets", name, self.namespace)
                assert secret is not None, f"pod {self.name}: no Secret {name} for its volume"
                for key, value in (secret.get("data") or {}).items():
                    path = self.mounts[volume["name"]] / key
                    path.write_bytes(base64.b64decode(value))
                    path.chmod(0o644)

    async def start(self, *, timeout: float = 60) -> None:
        """Init containers, then the container; ready once its readiness probe answers."""
        await self.write_secrets()
        await self.run_init_containers()
        container = self.container()
        self.runs += 1
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.argv(container),
                                         env=await self.process_env(container),
                                         cwd=self.workdir, stdout=log,
                                         stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        await self.wait_ready(timeout)

    async def wait_ready(self, timeout: float) -> None:
        probe = self.container()["readinessProbe"]["httpGet"]
        port = probe["port"]
        port = self.named_ports[port] if isinstance(port, str) else self.ports[port]
        url = f"http://127.0.0.1:{port}{probe['path']}"
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                if self.proc is None or self.proc.poll() is not None:
                    raise AssertionError(f"pod {self.name} exited\n{self.log()[-4000:]}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(url) as rsp:
                        if rsp.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise AssertionError(f"pod {self.name} not ready in {timeout}s\n"
                                         f"{self.log()[-4000:]}")
                await asyncio.sleep(0.1)

    @property
    def tls(self) -> bool:
        env = {e["name"]: e.get("value") for e in self.container().get("env") or []}
        return env.get("QKMS_TLS") == "auto" or "QKMS_TLS_CERT" in env

    @property
    def api_url(self) -> str:
        """The data plane: https (its certificate names localhost, for port-forwards)
        when the pod serves TLS."""
        port = self.named_ports["api"]
        return f"https://localhost:{port}" if self.tls else f"http://127.0.0.1:{port}"

    async def client(self, token: str) -> QkmsClient:
        """A client of this pod's data plane as a workload has one: the token, and the CA
        from the ConfigMap qkms-ca the operator publishes."""
        ca = None
        if self.tls:
            config = await self.cp.client.get("configmaps", "qkms-ca", self.namespace)
            assert config is not None, "the operator published no ConfigMap qkms-ca"
            ca = self.workdir / "qkms-ca.crt"
            ca.write_text(config["data"]["ca.crt"])
        return QkmsClient(self.api_url, token=token, ca_file=ca)

    async def stop(self, timeout: float = 15) -> None:
        if self.proc is not None:
            await stop_process(self.proc, timeout)

    async def mark_ready(self) -> None:
        """The kubelet's status report: Running and Ready."""
        await mark_ready(self.cp.client, self.pod)


async def mark_ready(kube: KubeClient, pod: dict[str, Any]) -> None:
    """Write a Pod's status as a kubelet reports a started, ready pod."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    conditions = [{"type": kind, "status": "True", "lastTransitionTime": now}
                  for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]
    meta = pod["metadata"]
    await kube.patch("pods", meta["name"], {"status": {
        "phase": "Running", "conditions": conditions, "startTime": now,
        "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}]}},
        meta["namespace"], subresource="status")


def audit_log(cp: ControlPlane, user: str = OPERATOR_USER) -> list[dict[str, Any]]:
    """The API server's audit events of `user` (one per request; a watch's last stage)."""
    path = cp.workdir / "audit.log"
    events: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        event = json.loads(line)
        if event.get("user", {}).get("username") == user:
            events[event["auditID"]] = event
    return list(events.values())


def requests_made(events: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource[/subresource], verb) of every request, as RBAC names them."""
    made = set()
    for event in events:
        ref = event.get("objectRef") or {}
        if not ref.get("resource"):
            continue  # discovery (/api, /apis): allowed to every authenticated user
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        made.add((ref.get("apiGroup", ""), resource, event["verb"]))
    return made
