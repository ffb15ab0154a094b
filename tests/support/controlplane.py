"""A real Kubernetes control plane for the tests: etcd, kube-apiserver, kube-controller-manager.

The binaries are the upstream programs, built from the Go module proxy by
``tests/controlplane/build.sh`` into a cache outside the clone (the first build takes
several minutes; later runs reuse it). ``QKMS_CONTROLPLANE_BIN`` names a folder that holds
ready binaries instead (for a machine without Go).

What runs, all on 127.0.0.1 at free ports, as envtest does (no nodes):

- etcd, plain HTTP on loopback, with its data in the test's folder (so it survives a
  restart of etcd or of the API server);
- kube-apiserver with ``--authorization-mode=Node,RBAC``, a ServiceAccount issuer and
  signing key (the TokenRequest API works), the admission plugins ``PodSecurity`` and
  ``OwnerReferencesPermissionEnforcement`` on top of the defaults, and certificates made
  here for the test;
- kube-controller-manager with the controllers whose behaviour qkms meets: namespace
  deletion, the garbage collector (owner references), ServiceAccounts and their tokens,
  the root CA publisher and ClusterRole aggregation.

:meth:`ControlPlane.client` is an admin (``system:masters``) client for the test itself;
:meth:`ControlPlane.service_account_kubeconfig` writes a kubeconfig holding a real
TokenRequest token, which is how the operator under test logs in: with exactly the RBAC
it ships, never as admin.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import os
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tests.support.kubeclient import KubeClient, KubeError, eventually
from tests.support.server_process import die_with_parent, free_port

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "tests" / "controlplane" / "build.sh"
ISSUER = "https://kubernetes.default.svc.cluster.local"
CONTROLLERS = ("namespace", "garbagecollector", "serviceaccount", "serviceaccount-token",
               "root-ca-cert-publisher", "clusterrole-aggregation")


class ControlPlaneError(RuntimeError):
    """A binary is missing or a server did not start; the message says which and why."""


def binaries() -> dict[str, Path]:
    """Paths of etcd, kube-apiserver, kube-controller-manager and kubectl (all at one
    release), building them if needed."""
    names = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
    if folder := os.environ.get("QKMS_CONTROLPLANE_BIN"):
        found = {name: Path(folder) / name for name in names}
    else:
        if shutil.which("go") is None and not _cached():
            raise ControlPlaneError(
                "Go is not installed and no built binaries are cached: install Go (1.26+) "
                "so that tests/controlplane/build.sh can build them, or set "
                "QKMS_CONTROLPLANE_BIN to a folder holding etcd, kube-apiserver, "
                "kube-controller-manager and kubectl")
        run = subprocess.run(["bash", str(BUILD_SCRIPT), "kube", "etcd"], capture_output=True,
                             text=True, check=False)
        if run.returncode != 0:
            raise ControlPlaneError(f"building the control plane failed:\n{run.stderr[-3000:]}")
        folders = [Path(line) for line in run.stdout.split()]
        found = {name: next(f / name for f in folders if (f / name).exists()) for name in names}
    missing = [str(path) for path in found.values() if not os.access(path, os.X_OK)]
    if missing:
        raise ControlPlaneError(f"not executable: {', '.join(missing)}")
    return found


def _cached() -> bool:
    cache = Path(os.environ.get("QKMS_SERVER_CACHE", Path.home() / ".cache/qkms/servers"))
    return any(cache.glob("kube-*/kubectl")) and any(cache.glob("etcd-*/etcd"))


# -- certificates --------------------------------------------------------------------------

def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _certificate(subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
                 signer: ec.EllipticCurvePrivateKey, *, ca: bool = False,
                 sans: Sequence[x509.GeneralName] = (), server: bool = False) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        usage = x509.ExtendedKeyUsageOID.SERVER_AUTH if server else \
            x509.ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _name(common: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


class PKI:
    """The test cluster's CA, serving certificate, client certificates and SA signing key."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca_name = _name("qkms-test-ca")
        self.ca_cert = _certificate(self.ca_name, self.ca_key, self.ca_name, self.ca_key, ca=True)
        self.ca_path = self._write("ca.crt", self.ca_cert.public_bytes(serialization.Encoding.PEM))
        sans = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
                *(x509.DNSName(n) for n in ("localhost", "kubernetes", "kubernetes.default",
                                             "kubernetes.default.svc"))]
        self.serving = self.issue("apiserver", _name("kube-apiserver"), sans=sans, server=True)
        self.admin = self.issue("admin", _name("qkms-test-admin", "system:masters"))
        self.controller_manager = self.issue("controller-manager",
                                             _name("system:kube-controller-manager"))
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.sa_key_path = self._write("sa.key", _pem_key(sa_key))
        self.sa_pub_path = self._write("sa.pub", sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    def _write(self, name: str, data: bytes) -> Path:
        path = self.folder / name
        path.write_bytes(data)
        path.chmod(0o600)
        return path

    def issue(self, stem: str, subject: x509.Name, *, sans: Sequence[x509.GeneralName] = (),
              server: bool = False) -> tuple[Path, Path]:
        """A certificate signed by the CA: (cert path, key path)."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(subject, key, self.ca_name, self.ca_key, sans=sans, server=server)
        return (self._write(f"{stem}.crt", cert.public_bytes(serialization.Encoding.PEM)),
                self._write(f"{stem}.key", _pem_key(key)))


def write_kubeconfig(path: Path, url: str, ca: Path, *, cert: tuple[Path, Path] | None = None,
                     token: str | None = None, namespace: str = "default") -> Path:
    user: dict[str, str] = {"token": token} if token else {
        "client-certificate": str(cert[0]), "client-key": str(cert[1])} if cert else {}
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": url,
                                                  "certificate-authority": str(ca)}}],
        "users": [{"name": "test", "user": user}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test",
                                                  "namespace": namespace}}],
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


# -- processes -----------------------------------------------------------------------------

class _Process:
    """One server binary with its log file; SIGTERM on stop, SIGKILL if it lingers."""

    def __init__(self, name: str, command: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.command = list(command)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"--- {self.name} log (tail) ---\n" + "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise ControlPlaneError(f"{self.name} exited with {self.proc.returncode}\n"
                                    f"{self.log_tail()}")

    async def stop(self, timeout: float = 15.0, *, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            await stop_process(self.proc, timeout, sig=sig)


async def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0, *,
                       sig: int = signal.SIGTERM) -> None:
    """Send `sig` (SIGTERM), wait up to `timeout` seconds, then SIGKILL and reap."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
        while proc.poll() is None:
            await asyncio.sleep(0.05)


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager in `workdir`, on free ports."""

    def __init__(self, workdir: Path, *, controllers: Sequence[str] = CONTROLLERS) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.bin = binaries()
        self.pki = PKI(workdir / "pki")
        self.etcd_port, self.etcd_peer_port = free_port(), free_port()
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.kubeconfig = write_kubeconfig(workdir / "admin.kubeconfig", self.url,
                                           self.pki.ca_path, cert=self.pki.admin)
        cm_config = write_kubeconfig(workdir / "controller-manager.kubeconfig", self.url,
                                     self.pki.ca_path, cert=self.pki.controller_manager)
        self.etcd = _Process("etcd", [
            str(self.bin["etcd"]), "--data-dir", str(workdir / "etcd"), "--name", "qkms-test",
            "--listen-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{self.etcd_peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.etcd_peer_port}",
            "--initial-cluster", f"qkms-test=http://127.0.0.1:{self.etcd_peer_port}",
            "--unsafe-no-fsync", "--log-level", "warn"], workdir / "etcd.log")
        self.apiserver = _Process("kube-apiserver", [
            str(self.bin["kube-apiserver"]),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}", f"--cert-dir={workdir / 'apiserver-certs'}",
            f"--tls-cert-file={self.pki.serving[0]}",
            f"--tls-private-key-file={self.pki.serving[1]}",
            f"--client-ca-file={self.pki.ca_path}",
            f"--service-account-issuer={ISSUER}",
            f"--service-account-key-file={self.pki.sa_pub_path}",
            f"--service-account-signing-key-file={self.pki.sa_key_path}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=OwnerReferencesPermissionEnforcement,PodSecurity",
            "--allow-privileged=false", "--profiling=false", "--v=0",
            # No egress: nothing here may dial out (no nodes, no webhooks of its own).
            "--endpoint-reconciler-type=none",
        ], workdir / "kube-apiserver.log")
        self.controller_manager = _Process("kube-controller-manager", [
            str(self.bin["kube-controller-manager"]),
            f"--kubeconfig={cm_config}", f"--authentication-kubeconfig={cm_config}",
            f"--authorization-kubeconfig={cm_config}",
            "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
            f"--cert-dir={workdir / 'controller-manager-certs'}",
            f"--controllers={','.join(controllers)}", "--leader-elect=false",
            f"--service-account-private-key-file={self.pki.sa_key_path}",
            f"--root-ca-file={self.pki.ca_path}", "--use-service-account-credentials=true",
            "--v=0"], workdir / "kube-controller-manager.log")
        self._admin: KubeClient | None = None
        self._admin_loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def ssl_context(self, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca_path))
        if cert is not None:
            context.load_cert_chain(str(cert[0]), str(cert[1]))
        return context

    @property
    def client(self) -> KubeClient:
        """An admin client (``system:masters``) for the test's own setup and checks; one per
        event loop, since the fixtures that start the servers and the tests run in others."""
        loop = asyncio.get_running_loop()
        if self._admin is None or self._admin_loop is not loop:
            self._admin = KubeClient(self.url, ssl_context=self.ssl_context(self.pki.admin))
            self._admin_loop = loop
        return self._admin

    def as_token(self, token: str | None) -> KubeClient:
        """A client that presents `token` (or nothing) instead of the admin certificate."""
        return KubeClient(self.url, ssl_context=self.ssl_context(), token=token)

    async def start(self, timeout: float = 90.0) -> None:
        await self.start_etcd(timeout)
        await self.start_apiserver(timeout)
        self.controller_manager.start()
        # The ServiceAccount controller makes "default" in each namespace: proof it works.
        await eventually(lambda: self.client.get("serviceaccounts", "default", "default"),
                         timeout=timeout, what="the controller-manager's first ServiceAccount",
                         context=self.controller_manager.log_tail)

    async def start_etcd(self, timeout: float = 30.0) -> None:
        self.etcd.start()

        async def healthy() -> bool:
            self.etcd.check_alive()
            reader, writer = await asyncio.open_connection("127.0.0.1", self.etcd_port)
            writer.write(b"GET /health HTTP/1.0\r\n\r\n")
            answer = await reader.read()
            writer.close()
            return b'"health":"true"' in answer
        await eventually(healthy, timeout=timeout, what="etcd healthy",
                         context=self.etcd.log_tail)

    async def start_apiserver(self, timeout: float = 90.0) -> None:
        self.apiserver.start()
        await self.wait_ready(timeout)

    async def wait_ready(self, timeout: float = 90.0) -> None:
        """Until kube-apiserver's ``/readyz`` says ok (etcd reachable, every hook done)."""
        async def ready() -> bool:
            self.apiserver.check_alive()
            return await self.client.request("GET", "/readyz", timeout=5) == "ok"
        await eventually(ready, timeout=timeout, interval=0.25, what="kube-apiserver ready",
                         context=self.apiserver.log_tail)

    # Faults for the reliability tests. Each server keeps its state: etcd's data folder
    # stays, and the API server comes back on the same port with the same certificates and
    # ServiceAccount signing key, so clients and tokens from before still work.

    async def stop_apiserver(self, timeout: float = 5.0) -> None:
        """Stop kube-apiserver: SIGTERM (it stops listening at once), SIGKILL after `timeout`
        (with watches open it may linger draining them); etcd and the controller-manager
        keep running."""
        await self.apiserver.stop(timeout)

    async def stop_etcd(self, timeout: float = 5.0) -> None:
        """Stop etcd (SIGTERM, SIGKILL after `timeout`), keeping its data; kube-apiserver
        keeps running without it."""
        await self.etcd.stop(timeout)

    async def stop(self) -> None:
        for process in (self.controller_manager, self.apiserver, self.etcd):
            await process.stop()
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    def logs(self) -> str:
        return "\n".join(p.log_tail() for p in (self.etcd, self.apiserver,
                                                 self.controller_manager))

    def kubectl(self, *args: str, kubeconfig: Path | None = None,
                input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl (same release as the server) against this control plane."""
        config = kubeconfig or self.kubeconfig
        return subprocess.run([str(self.bin["kubectl"]), f"--kubeconfig={config}", *args],
                              capture_output=True, text=True, input=input, check=False,
                              timeout=120, cwd=ROOT)

    # -- identities ------------------------------------------------------------------------

    async def token(self, namespace: str, name: str, *, audiences: Sequence[str] = (),
                    seconds: int = 86400) -> str:
        """A TokenRequest token for ServiceAccount `namespace/name` (made if missing)."""
        with contextlib.suppress(KubeError):
            await self.client.create("serviceaccounts", {
                "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": name, "namespace": namespace}}, namespace)
        spec: dict[str, object] = {"expirationSeconds": seconds}
        if audiences:
            spec["audiences"] = list(audiences)
        path = await self.client.path("serviceaccounts", namespace, name, "token")
        answer = await self.client.request("POST", path, body={
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
        return str(answer["status"]["token"])

    async def service_account_kubeconfig(self, namespace: str, name: str,
                                         path: Path | None = None) -> Path:
        """A kubeconfig that logs in as ServiceAccount `namespace/name` with a real token."""
        token = await self.token(namespace, name)
        path = path or self.workdir / f"{namespace}.{name}.kubeconfig"
        return write_kubeconfig(path, self.url, self.pki.ca_path, token=token,
                                namespace=namespace)
