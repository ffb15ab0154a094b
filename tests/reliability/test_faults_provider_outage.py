"""Provider outage under steady traffic: OpenBao stopped, then moto hung, then both back.

A real ``qkms serve`` process (standalone mode, data plane on 127.0.0.1) serves a dev
KeyPolicy whose provider is the server under test; a paced loop of sign requests runs
throughout. The outage lasts ``QKMS_RELIABILITY_OUTAGE_SECONDS`` (5 s here, 30 s in
``bench/bench_reliability.py``):

* OpenBao (raft storage, static seal) is **stopped**: nothing listens, calls are refused;
  it comes back with its keys;
* moto is **paused** (SIGSTOP: connections accepted, never answered, so every call waits
  out ``AWS_KMS_TIMEOUT``). moto keeps its keys in memory only, so a stopped moto would
  come back empty: the pause is the outage that must lose nothing.

During it: every answer is 200 or 503 ``KMS provider unavailable`` (counted); a rotation
requested through the manifest leaves the key Degraded with the reason; ``/health/keys``
answers 503; the server's CPU time over the outage is measured (printed; a generous bound
of half a core is asserted). After it, with no help: the first 200 (time printed), the
requested rotation done and Degraded cleared (time printed), and everything made before
still works (an old signature verifies, an old ciphertext decrypts).
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.server.common import TOKENS
from tests.server.conftest import tokens_file
from tests.support.kubeclient import eventually
from tests.support.moto import REGION, MotoServer
from tests.support.openbao import OpenBao, make_openbao_raft  # noqa: F401 - fixture
from tests.support.server_process import ServerError, free_port
from tests.support.servers import require_server

ROOT = Path(__file__).resolve().parents[2]
OUTAGE = float(os.environ.get("QKMS_RELIABILITY_OUTAGE_SECONDS", "5"))
NS = "payments"
RATE = 20.0  # sign requests per second, spread over the workers
WORKERS = 4
UNAVAILABLE = "KMS provider unavailable"


@dataclass
class Provider:
    """One provider under test: its KeyPolicy spec, the server's controls, the serve env."""

    name: str
    spec: dict[str, Any]
    signing: str  # an algorithm the provider holds natively: every SIGN is a provider call
    env: dict[str, str]
    down: Callable[[], None]
    up: Callable[[], None]
    how: str


@dataclass
class Figures:
    provider: str
    how: str
    outage_s: float = 0.0
    during: Counter[str] = field(default_factory=Counter)
    other: list[str] = field(default_factory=list)
    cpu_outage: float = 0.0  # share of one core
    cpu_steady: float = 0.0
    degraded: str = ""
    health_during: int = 0
    first_200_s: float = -1.0
    reconciled_s: float = -1.0
    lost: list[str] = field(default_factory=list)

    def line(self) -> str:
        during = " ".join(f"{k}:{v}" for k, v in sorted(self.during.items()))
        return (f"FIGURE provider-outage[{self.provider}]: {self.how} {self.outage_s:.0f}s; "
                f"answers during outage {during}; other={len(self.other)} "
                f"degraded={'yes' if self.degraded else 'NO'} health={self.health_during} "
                f"cpu_outage={self.cpu_outage:.1%} (steady {self.cpu_steady:.1%}) "
                f"recover_first_200_s={self.first_200_s:.2f} "
                f"recover_reconcile_s={self.reconciled_s:.1f} lost={len(self.lost)}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def manifests(folder: Path, provider: Provider, token: str | None = None) -> None:
    signer: dict[str, Any] = {"usage": "SIGNING", "algorithm": provider.signing, "owner": "app",
                              "rotationSchedule": "P30D"}
    if token:
        signer["rotationRequest"] = {"token": token}
    docs = [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": NS, "labels": {"qkms.io/environment": "dev"}}},
        {"apiVersion": "qkms.io/v1alpha1", "kind": "KeyPolicy", "metadata": {"name": "dev"},
         "spec": {"environment": "dev", "provider": provider.spec}},
        {"apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
         "metadata": {"name": "signer", "namespace": NS}, "spec": signer},
        {"apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
         "metadata": {"name": "sealer", "namespace": NS},
         "spec": {"usage": "ENCRYPTION", "algorithm": "AES-256-GCM", "owner": "app"}},
    ]
    path = folder / "keys.yaml"
    path.write_text(yaml.safe_dump_all(docs))


def status_of(out: Path, name: str) -> dict[str, Any]:
    return json.loads((out / "status" / NS / f"{name}.json").read_text())


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), {})


class Traffic:
    """A paced loop of sign requests; every answer is kept as (time, status, message)."""

    def __init__(self, url: str) -> None:
        self.url = url + f"/v1/keys/{NS}/signer:sign"
        self.answers: list[tuple[float, int, str]] = []
        self.stop = asyncio.Event()

    async def run(self) -> None:
        headers = {"Authorization": f"Bearer {TOKENS['checkout']}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            await asyncio.gather(*(self._worker(session) for _ in range(WORKERS)))

    async def _worker(self, session: aiohttp.ClientSession) -> None:
        body = {"input": base64.b64encode(b"steady traffic").decode()}
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                async with session.post(self.url, json=body) as rsp:
                    answer = await rsp.json(content_type=None)
                    message = "" if rsp.status == 200 else answer["error"]["message"]
                    self.answers.append((started, rsp.status, message))
            except (aiohttp.ClientError, ValueError, KeyError) as exc:
                self.answers.append((started, 0, repr(exc)))
            await asyncio.sleep(max(0.0, WORKERS / RATE - (time.monotonic() - started)))

    def first_ok_after(self, moment: float) -> float | None:
        return next((t for t, code, _ in self.answers if t >= moment and code == 200), None)


async def post(url: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {TOKENS['checkout']}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(url + path, json=body) as rsp:
            return rsp.status, await rsp.json(content_type=None)


async def health(url: str) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/health/keys") as rsp:
            return rsp.status


async def provider_outage(tmp_path: Path, provider: Provider, outage: float = OUTAGE) -> Figures:
    figures = Figures(provider.name, provider.how)
    folder, out = tmp_path / "manifests", tmp_path / "out"
    folder.mkdir(parents=True)
    manifests(folder, provider)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT)]),
           "QKMS_DATA_DIR": str(tmp_path / "data"), "QKMS_KEY_CACHE_SECONDS": "0",
           **provider.env}
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "qkms", "serve", "--manifests", str(folder), "--out", str(out),
         "--poll", "0.5", "--listen", f"127.0.0.1:{port}",
         "--tokens", str(tokens_file(tmp_path / "tokens.yaml"))],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    traffic = Traffic(url)
    runner: asyncio.Task[None] | None = None
    try:
        await eventually(lambda: health(url), timeout=60, what="qkms serve answering",
                         context=lambda: (tmp_path / "serve.log").read_text())
        await eventually(lambda: condition(status_of(out, "signer"), "Ready").get("status")
                         == "True", timeout=30, what="keys Ready")
        code, signed = await post(url, f"/v1/keys/{NS}/signer:sign",
                                  {"input": base64.b64encode(b"before").decode()})
        assert code == 200, signed
        code, sealed = await post(url, f"/v1/keys/{NS}/sealer:encrypt",
                                  {"input": base64.b64encode(b"kept").decode()})
        assert code == 200, sealed

        runner = asyncio.create_task(traffic.run())
        cpu, start = cpu_seconds(proc.pid), time.monotonic()
        await asyncio.sleep(2.0)
        figures.cpu_steady = (cpu_seconds(proc.pid) - cpu) / (time.monotonic() - start)

        await asyncio.to_thread(provider.down)
        down_at = time.monotonic()
        cpu = cpu_seconds(proc.pid)
        manifests(folder, provider, token="during-outage")  # a rotation the provider must do

        async def degraded() -> str:
            found = condition(status_of(out, "signer"), "Degraded")
            return found.get("message", "") if found.get("status") == "True" else ""
        figures.degraded = await eventually(degraded, timeout=max(outage, 2.0) + 10,
                                            what="signer Degraded")
        figures.health_during = await health(url)
        await asyncio.sleep(max(0.0, outage - (time.monotonic() - down_at)))
        figures.cpu_outage = (cpu_seconds(proc.pid) - cpu) / (time.monotonic() - down_at)
        assert proc.poll() is None, "qkms serve died during the outage"

        await asyncio.to_thread(provider.up)
        up_at = time.monotonic()
        figures.outage_s = up_at - down_at
        for moment, code, message in traffic.answers:
            if down_at + 0.5 <= moment < up_at - 0.5:  # clear of the edges
                label = f"{code}" + (f" {UNAVAILABLE}" if UNAVAILABLE in message else "")
                figures.during[label] += 1
                if code not in (200, 503) or (code == 503 and UNAVAILABLE not in message):
                    figures.other.append(f"{code} {message}")

        first = await eventually(lambda: traffic.first_ok_after(up_at), timeout=60,
                                 what="the first 200 after the outage")
        figures.first_200_s = first - up_at

        async def reconciled() -> bool:
            status = status_of(out, "signer")
            return (condition(status, "Degraded").get("status") == "False"
                    and status.get("currentVersion") == 2)
        await eventually(reconciled, timeout=90, interval=0.2,
                         what="the requested rotation done and Degraded cleared")
        figures.reconciled_s = time.monotonic() - up_at
        traffic.stop.set()
        await runner

        # Nothing lost: what was made before the outage still works.
        code, valid = await post(url, f"/v1/keys/{NS}/signer:verify",
                                 {"input": base64.b64encode(b"before").decode(),
                                  "signature": signed["signature"]})
        if code != 200 or not valid.get("valid"):
            figures.lost.append(f"signature of {signed['key_id']}: {code} {valid}")
        code, opened = await post(url, f"/v1/keys/{NS}/sealer:decrypt",
                                  {"ciphertext": sealed["ciphertext"]})
        if code != 200 or base64.b64decode(opened.get("plaintext", "")) != b"kept":
            figures.lost.append(f"ciphertext of {sealed['key_id']}: {code} {opened}")
        code, signed_now = await post(url, f"/v1/keys/{NS}/signer:sign",
                                      {"input": base64.b64encode(b"after").decode()})
        if code != 200 or signed_now.get("version") != 2:
            figures.lost.append(f"signing after the outage: {code} {signed_now}")
    finally:
        traffic.stop.set()
        if runner is not None and not runner.done():
            await runner
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return figures


def check(figures: Figures) -> None:
    print(figures.line())
    for other in figures.other[:5]:
        print(f"  unexpected answer during the outage: {other}")
    assert not figures.other, figures.other
    assert figures.during.get(f"503 {UNAVAILABLE}", 0) > 0, figures.during
    assert UNAVAILABLE in figures.degraded, figures.degraded
    assert figures.health_during == 503
    assert figures.cpu_outage < 0.5, f"{figures.cpu_outage:.0%} of a core during the outage"
    assert not figures.lost, figures.lost


def openbao(vault: OpenBao) -> Provider:
    def up() -> None:
        vault.start()  # the same raft storage; the static seal unseals it
    return Provider("HASHICORP_VAULT",
                    {"type": "HASHICORP_VAULT",
                     "settings": {"address": vault.address, "mountPath": "transit",
                                  "timeout": "0.5"}},
                    "Ed25519", {"VAULT_TOKEN": vault.token}, vault.stop, up, "stopped")


def moto(server: MotoServer) -> Provider:
    return Provider("AWS_KMS",
                    {"type": "AWS_KMS",
                     "settings": {"region": REGION, "endpoint": server.endpoint,
                                  "timeout": "0.5"}},
                    "ECDSA-P256",
                    {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
                    server.pause, server.resume, "paused")


async def test_openbao_outage_under_traffic(tmp_path: Path, make_openbao_raft) -> None:  # noqa: F811
    check(await provider_outage(tmp_path, openbao(make_openbao_raft())))


@pytest.fixture
def own_moto(tmp_path: Path):  # its own server: this one gets paused
    for module in ("moto", "boto3"):
        if importlib.util.find_spec(module) is None:
            require_server("moto", f"{module} is not installed (pip install 'moto[server]')")
    server = MotoServer(tmp_path / "moto")
    try:
        server.start()
    except (ServerError, OSError) as exc:
        server.stop()
        require_server("moto", str(exc))
    yield server
    server.stop()


async def test_moto_outage_under_traffic(tmp_path: Path, own_moto: MotoServer) -> None:
    check(await provider_outage(tmp_path, moto(own_moto)))
