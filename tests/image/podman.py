"""The qkms image, built by tests/image/build.sh and run with podman as a kubelet would.

:class:`PodmanPod` takes a Pod the real API server made (from manifests/ or the chart, by
the StatefulSet controller: tests/install/pods.py) and runs its init containers and its
container from the image, with what the Pod asks for:

- the environment, resolved as the kubelet resolves it (downward API, Secrets), plus
  ``KUBERNETES_SERVICE_HOST``/``PORT`` and the ServiceAccount's projected token, CA bundle
  and namespace mounted at /var/run/secrets/kubernetes.io/serviceaccount, so the code logs
  in with ``load_incluster_config`` exactly as in a cluster;
- the securityContext: ``--user`` 10001:10001, ``--read-only`` (no tmpfs added by podman),
  ``--cap-drop ALL``, ``no-new-privileges``, podman's default seccomp profile;
- the volumes: the claim and the emptyDir are folders of this machine mounted at their
  mountPaths, owned by the pod's fsGroup (10001) as the kubelet makes them.

What differs from a node, and why: the network is the host's (``--network host``: the API
server listens on 127.0.0.1), so the container ports 8080/8443 are moved to free ports
(the liveness argument and ``QKMS_API_LISTEN``); runc, not crun, and no cgroup limits
(crun fails on this machine's cgroups); ``--ulimit nproc`` is the machine's hard limit,
clamped to ``kernel.pid_max`` (runc cannot set more here).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.install.pods import LocalPod
from tests.support.servers import require_server

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "tests" / "image" / "build.sh"
TOOLS = ("podman", "buildah", "debootstrap")
APT = "apt-get install -y buildah podman debootstrap runc"
CACHE = Path(os.environ.get("QKMS_IMAGE_CACHE", Path.home() / ".cache" / "qkms" / "image"))
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def require_tools() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        require_server("the image tools", f"{', '.join(missing)} missing: {APT}")


def build_image() -> tuple[str, str]:
    """(image, summary line) from tests/image/build.sh (cached layers: fast when warm)."""
    require_tools()
    run = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True, timeout=3000,
                         check=False)
    if run.returncode != 0:
        raise AssertionError(f"tests/image/build.sh failed:\n{run.stderr[-6000:]}")
    return run.stdout.strip().splitlines()[-1], (CACHE / "last-build.txt").read_text().strip()


def nproc_limit() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    return pid_max if hard == resource.RLIM_INFINITY else min(hard, pid_max)


def podman(*args: str, timeout: float = 300, check: bool = True,
           input: str | None = None) -> subprocess.CompletedProcess[str]:
    storage = ["--root", str(CACHE / "storage"), "--runroot", str(CACHE / "run"),
               "--storage-driver", "vfs"]
    run = subprocess.run(["podman", *storage, *args], capture_output=True, text=True,
                         timeout=timeout, check=False, input=input)
    if check and run.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])}...: {run.returncode}\n"
                             f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    return run


def run_flags(uid: int = 10001, gid: int = 10001) -> list[str]:
    return ["--runtime", "runc", "--network", "host", "--ulimit", "nofile=1024:1024",
            "--ulimit", f"nproc={nproc_limit()}:{nproc_limit()}",
            "--user", f"{uid}:{gid}", "--read-only", "--read-only-tmpfs=false",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]


class PodmanPod(LocalPod):
    """A Pod of the API server run from the image with podman (see the module docstring)."""

    def __init__(self, cp: Any, pod: dict[str, Any], volumes: Path, workdir: Path,
                 image: str) -> None:
        super().__init__(cp, pod, volumes, workdir)
        self.image = image
        self.container_name = f"qkms-test-{pod['metadata']['name']}-{os.getpid()}"
        group = pod["spec"].get("securityContext", {}).get("fsGroup", 10001)
        for folder in self.mounts.values():  # the kubelet gives volumes to the fsGroup
            os.chown(folder, 10001, group)
            folder.chmod(0o770)

    def host_path(self, container: dict[str, Any], path: str) -> str:
        return path  # inside the container the mount paths are real

    async def _credentials(self) -> Path:
        folder = self.workdir / "serviceaccount"
        if not folder.exists():
            folder.mkdir()
            token = await self.cp.token(self.namespace,
                                        self.pod["spec"].get("serviceAccountName", "default"))
            (folder / "token").write_text(token)
            (folder / "namespace").write_text(self.namespace)
            shutil.copy(self.cp.pki.ca_path, folder / "ca.crt")
            for item in folder.iterdir():
                item.chmod(0o644)
        return folder

    async def podman_args(self, container: dict[str, Any]) -> list[str]:
        env = await self.environment(container)
        env.update(KUBERNETES_SERVICE_HOST="127.0.0.1",
                   KUBERNETES_SERVICE_PORT=str(self.cp.port))
        if 8443 in self.ports and container is self.container():
            env.setdefault("QKMS_API_LISTEN", f"127.0.0.1:{self.ports[8443]}")
        context = container.get("securityContext") or {}
        args = run_flags(context.get("runAsUser", 10001), context.get("runAsGroup", 10001))
        args += ["-v", f"{await self._credentials()}:{SA_DIR}:ro"]
        for mount in container.get("volumeMounts") or []:
            if mount["name"] in self.mounts:
                args += ["-v", f"{self.mounts[mount['name']]}:{mount['mountPath']}"]
        for name, value in env.items():
            args += ["--env", f"{name}={value}"]
        command = container.get("command")
        if command:
            args += ["--entrypoint", json.dumps(command)]
        return [*args, self.image, *[self._rewrite(container, a)
                                     for a in container.get("args") or []]]

    async def run_init_containers(self, timeout: float = 120) -> list[str]:
        outputs = []
        for init in self.pod["spec"].get("initContainers") or []:
            args = await self.podman_args(init)
            run = await asyncio.to_thread(podman, "run", "--rm", *args, timeout=timeout,
                                          check=False)
            assert run.returncode == 0, \
                f"init container {init['name']} of {self.name}:\n{run.stdout}\n{run.stderr}"
            outputs.append(run.stdout.strip())
        return outputs

    async def start(self, *, timeout: float = 120) -> None:
        await self.write_secrets()
        await self.run_init_containers()
        self.runs += 1
        args = await self.podman_args(self.container())
        await asyncio.to_thread(podman, "run", "--detach", "--name", self.container_name,
                                *args)
        self.proc = _Attached(self.container_name)  # type: ignore[assignment]
        await self.wait_ready(timeout)

    def log(self) -> str:
        run = podman("logs", self.container_name, check=False)
        return run.stdout + run.stderr

    async def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(podman, "exec", self.container_name, *command,
                                       check=False)

    async def stop(self, timeout: float = 15) -> None:
        await asyncio.to_thread(podman, "stop", "--time", str(int(timeout)),
                                self.container_name, check=False, timeout=timeout + 30)

    async def remove(self) -> None:
        await asyncio.to_thread(podman, "rm", "--force", self.container_name, check=False)


class _Attached:
    """What LocalPod.wait_ready asks of a process, for a detached container."""

    def __init__(self, name: str) -> None:
        self.name = name

    def poll(self) -> int | None:
        state = podman("inspect", "--format", "{{.State.Running}} {{.State.ExitCode}}",
                       self.name, check=False).stdout.split()
        return None if state[:1] == ["true"] else int(state[1]) if len(state) > 1 else 1
