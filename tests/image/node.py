"""A real node for the image: the upstream kubelet (tests/controlplane/kubelet, the control
plane's release) on Debian's containerd and runc, all in one test folder.

containerd runs with a private config, root, state and socket in that folder; the kubelet
registers the node ``qkms-node`` with a client certificate for ``system:node:qkms-node``
(the API server authorizes it with the Node authorizer), listens on 127.0.0.1 only and
runs pods through that socket. The images come from this machine, not a registry: the
qkms image from tests/image/build.sh's storage (``podman save``, ``ctr images import``)
and a pause image around tests/controlplane/pause (buildah, a storage of the test's own).

What these VMs need, and why (each is the first error met without it; the README quotes them):

- ``failCgroupV1: false``: the machine has cgroup v1 and the kubelet refuses it by default;
- containerd's ``restrict_oom_score_adj``: the VM withholds CAP_SYS_RESOURCE, so runc's
  ``oom_score_adj`` of -998 for a sandbox fails ("nsexec: failed to update
  /proc/self/oom_score_adj: Permission denied");
- eviction thresholds of 1 %: the shared disk is below the default 15 % free for images;
- ``hostNetwork`` pods (no CNI network: the API server listens on 127.0.0.1, which a pod's
  own network namespace cannot reach), so the pod's namespace allows it (PodSecurity
  ``privileged`` instead of ``restricted``);
- the node has no address (the kubelet refuses a loopback node IP), so ``kubectl logs``
  and ``exec`` cannot reach it: the test reads the container through containerd instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from tests.image.podman import podman
from tests.support.controlplane import BUILD_SCRIPT, ControlPlane, _name, write_kubeconfig
from tests.support.kubeclient import eventually
from tests.support.server_process import die_with_parent, free_port
from tests.support.servers import require_server

NODE = "qkms-node"
PAUSE_IMAGE = "localhost/qkms-test-pause:1"
TOOLS = ("containerd", "ctr", "runc", "buildah", "podman")

CONTAINERD_CONFIG = """\
version = 2
root = "{dir}/root"
state = "{dir}/state"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    conf_dir = "{dir}/cni"
"""


def built(module: str, name: str) -> Path:
    run = subprocess.run(["bash", str(BUILD_SCRIPT), module], capture_output=True, text=True,
                         timeout=3000, check=False)
    if run.returncode != 0:
        require_server(f"the {name}", f"build.sh {module} failed:\n{run.stderr[-3000:]}")
    return Path(run.stdout.split()[-1]) / name


class Node:
    """containerd + kubelet in ``folder``, registered with ``cp``; :meth:`stop` removes every
    container it ran (no shim or mount outlives the test)."""

    def __init__(self, cp: ControlPlane, folder: Path) -> None:
        missing = [tool for tool in TOOLS if shutil.which(tool) is None]
        if missing:
            require_server("a node", f"{', '.join(missing)} missing: apt-get install -y "
                           "containerd runc buildah podman")
        self.cp, self.dir = cp, folder
        folder.mkdir(parents=True, exist_ok=True)
        # Socket and podman runroot paths have length limits (108, 50): a short folder.
        self.short = Path(tempfile.mkdtemp(prefix="qkms-node-"))
        self.socket = self.short / "containerd.sock"
        self.procs: list[subprocess.Popen[bytes]] = []

    def ctr(self, *args: str, timeout: float = 600) -> str:
        run = subprocess.run(["ctr", "--address", str(self.socket), "-n", "k8s.io", *args],
                             capture_output=True, text=True, timeout=timeout, check=False)
        assert run.returncode == 0, f"ctr {' '.join(args)}:\n{run.stderr[-2000:]}"
        return run.stdout

    def _spawn(self, name: str, command: list[str]) -> None:
        with (self.dir / f"{name}.log").open("ab") as log:
            self.procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL,
                                               preexec_fn=die_with_parent))

    def log(self, name: str, lines: int = 60) -> str:
        path = self.dir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return f"--- {name} ---\n" + "\n".join(text.splitlines()[-lines:])

    async def start_containerd(self) -> None:
        (self.dir / "cni").mkdir(exist_ok=True)
        config = self.dir / "containerd.toml"
        config.write_text(CONTAINERD_CONFIG.format(dir=self.dir, socket=self.socket,
                                                   pause=PAUSE_IMAGE,
                                                   runc=shutil.which("runc")))
        self._spawn("containerd", ["containerd", "--config", str(config)])
        await eventually(lambda: self.socket.exists(), timeout=30, what="containerd's socket",
                         context=lambda: self.log("containerd"))

    def import_images(self, image: str) -> None:
        """The qkms image from build.sh's storage, and the pause image (built here)."""
        archive = self.dir / "qkms.tar"
        podman("save", "--format", "oci-archive", "-o", str(archive), image, timeout=600)
        self.ctr("images", "import", "--base-name", image.rsplit(":", 1)[0], str(archive))
        archive.unlink()
        pause = built("pause", "pause")
        storage = ["--root", str(self.dir / "buildah"), "--runroot", str(self.short / "run"),
                   "--storage-driver", "vfs"]

        def run(tool: str, *args: str) -> str:
            done = subprocess.run([tool, *storage, *args], capture_output=True, text=True,
                                  check=False, timeout=120)
            assert done.returncode == 0, f"{tool} {args[0]}: {done.stderr[-2000:]}"
            return done.stdout.strip()

        def buildah(*args: str) -> str:
            return run("buildah", *args)
        box = buildah("from", "scratch")
        buildah("copy", box, str(pause), "/pause")
        buildah("config", "--entrypoint", '["/pause"]', box)
        buildah("commit", "-q", box, PAUSE_IMAGE)
        run("podman", "save", "--format", "oci-archive", "-o", str(self.dir / "pause.tar"),
            PAUSE_IMAGE)
        self.ctr("images", "import", "--base-name", PAUSE_IMAGE.rsplit(":", 1)[0],
                 str(self.dir / "pause.tar"))

    async def start_kubelet(self) -> None:
        cert = self.cp.pki.issue("node", _name(f"system:node:{NODE}", "system:nodes"))
        kubeconfig = write_kubeconfig(self.dir / "node.kubeconfig", self.cp.url,
                                      self.cp.pki.ca_path, cert=cert)
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": "127.0.0.1", "port": free_port(), "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": free_port(),
            "cgroupDriver": "cgroupfs", "failSwapOn": False, "failCgroupV1": False,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                               "x509": {"clientCAFile": str(self.cp.pki.ca_path)}},
            "authorization": {"mode": "AlwaysAllow"},
            "podLogsDir": str(self.dir / "pod-logs"), "resolvConf": "",
            "evictionHard": {"nodefs.available": "1%", "imagefs.available": "1%",
                             "memory.available": "100Mi"}}
        (self.dir / "kubelet.yaml").write_text(yaml.safe_dump(config))
        self._spawn("kubelet", [
            str(built("kubelet", "kubelet")), f"--config={self.dir / 'kubelet.yaml'}",
            f"--kubeconfig={kubeconfig}", f"--root-dir={self.dir / 'kubelet'}",
            f"--cert-dir={self.dir / 'kubelet-certs'}", f"--hostname-override={NODE}",
            "--v=1"])
        await eventually(lambda: self.cp.client.get("nodes", NODE), timeout=60,
                         what=f"node {NODE} registered", context=lambda: self.log("kubelet"))

    def container_uid(self, name: str) -> int:
        """The uid of a running container's first process, read through containerd."""
        for line in self.ctr("tasks", "ls").splitlines()[1:]:
            task, pid, status = line.split()
            info = yaml.safe_load(self.ctr("containers", "info", task))
            labels = info.get("Labels") or {}
            if labels.get("io.kubernetes.container.name") == name and status == "RUNNING":
                status_text = Path(f"/proc/{pid}/status").read_text()
                return int(next(v for v in status_text.splitlines()
                                if v.startswith("Uid:")).split()[1])
        raise AssertionError(f"no running container {name} in containerd")

    async def stop(self) -> None:
        """Stop the kubelet, then kill and remove every container, then stop containerd."""
        for proc in self.procs[1:]:  # the kubelet
            await _terminate(proc)
        if self.procs and self.procs[0].poll() is None:
            for line in self.ctr("tasks", "ls").splitlines()[1:]:
                self._ctr_quiet("tasks", "kill", "-s", "SIGKILL", line.split()[0])
            await asyncio.sleep(1)
            for container in self.ctr("containers", "ls", "-q").split():
                self._ctr_quiet("tasks", "delete", "-f", container)
                self._ctr_quiet("containers", "delete", container)
            await _terminate(self.procs[0])
        self._unmount()
        self._remove_cgroups()
        shutil.rmtree(self.short, ignore_errors=True)

    def _unmount(self) -> None:
        """The kubelet's and containerd's mounts under the folder (its root, token volumes,
        shm), deepest first, so the folder can be removed."""
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        for point in sorted((m for m in mounts if m.startswith(f"{self.dir}/")
                             or m == str(self.dir)), reverse=True):
            if subprocess.run(["umount", point], capture_output=True, check=False).returncode:
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)

    @staticmethod
    def _remove_cgroups() -> None:
        """The empty pod cgroups the kubelet made (cgroupfs driver: /kubepods in each v1
        hierarchy)."""
        for top in Path("/sys/fs/cgroup").glob("*/kubepods"):
            for folder in sorted((d for d in top.rglob("*") if d.is_dir()),
                                 key=lambda d: len(d.parts), reverse=True) + [top]:
                with contextlib.suppress(OSError):
                    folder.rmdir()

    def _ctr_quiet(self, *args: str) -> None:
        subprocess.run(["ctr", "--address", str(self.socket), "-n", "k8s.io", *args],
                       capture_output=True, check=False, timeout=60)


async def _terminate(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        await asyncio.to_thread(proc.wait, 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        await asyncio.to_thread(proc.wait)


def pod_of_template(statefulset: dict[str, Any], image: str, api_port: int) -> dict[str, Any]:
    """The StatefulSet's pod template as a Pod bound to the node: the image built here, the
    host's network (the API server on 127.0.0.1, free ports for health and the data plane),
    the audit claim as an emptyDir (no volume provisioner)."""
    template = statefulset["spec"]["template"]
    spec = yaml.safe_load(yaml.safe_dump(template["spec"]))
    spec.update(nodeName=NODE, hostNetwork=True)
    spec.pop("affinity", None)
    spec["volumes"].append({"name": "audit", "emptyDir": {}})
    health, api = free_port(), free_port()
    for container in spec["initContainers"] + spec["containers"]:
        container.update(image=image, imagePullPolicy="Never")
        container.setdefault("env", []).extend([
            {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
            {"name": "KUBERNETES_SERVICE_PORT", "value": str(api_port)}])
    main = spec["containers"][0]
    main["args"] = [arg.replace(":8080/", f":{health}/") for arg in main["args"]]
    main["env"].append({"name": "QKMS_API_LISTEN", "value": f"127.0.0.1:{api}"})
    main["ports"] = [{"name": "health", "containerPort": health},
                     {"name": "api", "containerPort": api}]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{statefulset['metadata']['name']}-node-0",
                         "namespace": statefulset["metadata"]["namespace"],
                         "labels": template["metadata"]["labels"]},
            "spec": spec}
