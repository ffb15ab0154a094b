"""A full disk under the embedded store and the audit chain: clear errors, keys intact, and
recovery once space returns.

Tests run as root here, so a read-only ``chmod`` would change nothing, and there is no
tmpfs or mount to fill. Two faults stand in for a full disk instead:

* **``RLIMIT_FSIZE`` = 0 on a running ``qkms serve``** (``prlimit``, no patching): from then
  on the kernel refuses every write that would grow a file (``EFBIG``, "File too large"),
  as a full disk refuses with ``ENOSPC``. Reads, renames and deletions still work, as on
  a full disk. Raising the limit again is the space coming back, with no restart. The
  server's output goes to a pipe, which the limit does not cover.
* **``fsync`` failing with ``ENOSPC``**, in process, by replacing ``os`` in the two
  modules that write (``qkms.store.records`` and ``qkms.audit.store``) with a proxy whose
  ``fsync`` raises. ``RLIMIT_FSIZE`` cannot make fsync fail, and a failed fsync is the one
  fault the chain never recovers from in place (the kernel may have dropped the data):
  the design is that it refuses every append until it is reopened, so this part checks
  that promise, the next service start.
"""

from __future__ import annotations

import base64
import errno
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
import yaml

from qkms.audit.verify import verify_folder
from qkms.config import Settings
from qkms.crypto import verify_signature
from qkms.errors import AuditStorageError, RotationFailedError, StorageError
from qkms.model.enums import Environment
from qkms.service import KeyManagementService
from tests.reliability.test_faults_crash import audit_verify
from tests.support.kubeclient import eventually
from tests.support.server_process import free_port

ROOT = Path(__file__).resolve().parents[2]
TOKENS = {"dev": "tok-disk-dev", "prod": "tok-disk-prod"}
NAMESPACES = {"dev": "payments", "prod": "shop"}
NEW_KEY = {"apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
           "metadata": {"name": "after-full", "namespace": "shop"},
           "spec": {"usage": "SIGNING", "algorithm": "Ed25519", "owner": "app"}}


def write_manifests(folder: Path, extra: list[dict[str, Any]] | None = None) -> None:
    docs: list[dict[str, Any]] = []
    for env, ns in NAMESPACES.items():
        docs += [{"apiVersion": "v1", "kind": "Namespace",
                  "metadata": {"name": ns, "labels": {"qkms.io/environment": env}}},
                 {"apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
                  "metadata": {"name": "signer", "namespace": ns},
                  "spec": {"usage": "SIGNING", "algorithm": "Ed25519", "owner": "app"}}]
    (folder / "keys.yaml").write_text(yaml.safe_dump_all(docs + (extra or [])))


def write_tokens(path: Path) -> Path:
    data = {"tokens": [{"serviceAccount": f"{ns}/app", "token": TOKENS[env]}
                       for env, ns in NAMESPACES.items()],
            "grants": [{"serviceAccount": f"{ns}/app", "namespace": ns,
                        "verbs": ["sign", "verify"]} for ns in NAMESPACES.values()]}
    path.write_text(yaml.safe_dump(data))
    return path


class Serve:
    """``qkms serve`` with its output read from a pipe (a file would be refused too)."""

    def __init__(self, tmp_path: Path) -> None:
        self.folder, self.out = tmp_path / "manifests", tmp_path / "out"
        self.data = tmp_path / "data"
        self.folder.mkdir()
        write_manifests(self.folder)
        self.url = f"http://127.0.0.1:{free_port()}"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT)]),
               "QKMS_DATA_DIR": str(self.data), "QKMS_KEY_CACHE_SECONDS": "0",
               "QKMS_AUDIT_CHECKPOINT_SECONDS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qkms", "serve", "--manifests", str(self.folder),
             "--out", str(self.out), "--poll", "0.3", "--listen", self.url[len("http://"):],
             "--tokens", str(write_tokens(tmp_path / "tokens.yaml"))],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def output(self) -> str:
        return "\n".join(self.lines)

    def disk_full(self, full: bool) -> None:
        limit = 0 if full else resource.RLIM_INFINITY
        resource.prlimit(self.proc.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    async def call(self, env: str, operation: str, body: dict[str, Any],
                   name: str = "signer") -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {TOKENS[env]}"}
        path = f"/v1/keys/{NAMESPACES[env]}/{name}:{operation}"
        async with aiohttp.ClientSession(headers=headers) as session:
            async with session.post(self.url + path, json=body) as rsp:
                return rsp.status, await rsp.json(content_type=None)

    async def health(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session:
            async with session.get(self.url + "/health/keys") as rsp:
                return dict(await rsp.json(content_type=None))

    def ready(self, ns: str, name: str) -> bool:
        path = self.out / "status" / ns / f"{name}.json"
        return path.exists() and '"phase": "Ready"' in path.read_text()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._reader.join(timeout=5)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_disk_full_fails_clearly_keeps_keys_and_recovers_without_restart(
        tmp_path: Path) -> None:
    serve = Serve(tmp_path)
    try:
        await eventually(lambda: serve.ready("shop", "signer") and serve.ready("payments",
                                                                                 "signer"),
                         timeout=60, what="keys Ready", context=serve.output)
        await eventually(serve.health, timeout=30, what="data plane up", context=serve.output)
        signed = {}
        for env in NAMESPACES:
            code, signed[env] = await serve.call(env, "sign", {"input": b64(b"before")})
            assert code == 200, signed[env]

        serve.disk_full(True)
        full_at = time.monotonic()
        answers: dict[str, list[tuple[int, str]]] = {}
        for env in NAMESPACES:
            for op, body in (("sign", {"input": b64(b"during")}),
                             ("verify", {"input": b64(b"before"),
                                         "signature": signed[env]["signature"]})):
                for _ in range(3):
                    code, answer = await serve.call(env, op, body)
                    message = (answer.get("error") or {}).get("message", "")
                    answers.setdefault(f"{env} {op}", []).append((code, message))
        write_manifests(serve.folder, [NEW_KEY])  # the test writes it: only serve is limited
        refusal = await eventually(
            lambda: next((line for line in serve.lines if "shop/after-full" in line
                          and line.startswith("error:")), None),
            timeout=20, what="the new key refused with an error line", context=serve.output)
        health = await serve.health()
        alive = serve.proc.poll() is None

        serve.disk_full(False)
        back_at = time.monotonic()

        async def prod_signs() -> bool:
            return (await serve.call("prod", "sign", {"input": b64(b"after")}))[0] == 200
        await eventually(prod_signs, timeout=30, interval=0.1, what="prod signing again")
        first_ok = time.monotonic() - back_at
        await eventually(lambda: serve.ready("shop", "after-full"), timeout=30, interval=0.1,
                         what="the new key Ready", context=serve.output)
        created = time.monotonic() - back_at
        intact = 0
        for env in NAMESPACES:
            code, valid = await serve.call(env, "verify", {"input": b64(b"before"),
                                                           "signature": signed[env]["signature"]})
            intact += code == 200 and valid.get("valid") is True
        code, _ = await serve.call("prod", "sign", {"input": b64(b"x")}, name="after-full")
        new_key_signs = code == 200
    finally:
        serve.stop()
    audits = {env: audit_verify(serve.data / env) for env in NAMESPACES}
    tracebacks = serve.output().count("Traceback")

    def summary(key: str) -> str:
        codes = answers[key]
        first = next((m for c, m in codes if m), "")
        return f"{key}={'/'.join(str(c) for c, _ in codes)}" + (f" ({first})" if first else "")
    print(f"FIGURE disk-full[RLIMIT_FSIZE=0 on qkms serve]: {summary('prod sign')}; "
          f"{summary('prod verify')}; {summary('dev sign')} (fail-open, unaudited); "
          f"{summary('dev verify')}; new key: {refusal.split(': ', 2)[-1]}; "
          f"server alive={alive} health={health['status']} tracebacks={tracebacks}; "
          f"full for {back_at - full_at:.1f}s")
    print(f"FIGURE disk-full-recovery[no restart]: first prod 200 after {first_ok:.2f}s, "
          f"new key Ready after {created:.1f}s and signs={new_key_signs}; "
          f"keys intact {intact}/2 (pre-fault signatures verify); audit "
          + " ".join(f"{env}={'verified' if a['ok'] else 'FAILED'}({a.get('entries')})"
                     for env, a in audits.items()))
    prod = "Audit event storage failed"
    assert all(c == 503 and m.startswith(prod) for c, m in answers["prod sign"])
    assert all(c == 503 and m.startswith(prod) for c, m in answers["prod verify"])
    assert all(c == 200 for c, _ in answers["dev sign"] + answers["dev verify"])
    assert "Key store write failed" in refusal or prod in refusal, refusal
    assert alive and health["status"] == "degraded" and tracebacks == 0, serve.output()
    assert intact == 2 and new_key_signs
    assert all(a["ok"] for a in audits.values()), audits


class FailingFsync(SimpleNamespace):
    """``os`` for one module, whose ``fsync`` fails while ``full`` is set."""

    def __init__(self) -> None:
        super().__init__(full=False)

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def fsync(self, fd: int) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.fsync(fd)


async def test_failed_fsync_refuses_until_reopened_then_everything_works(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import qkms.audit.store
    import qkms.store.records

    fault = FailingFsync()
    monkeypatch.setattr(qkms.store.records, "os", fault)
    monkeypatch.setattr(qkms.audit.store, "os", fault)
    settings = Settings(environment=Environment.PROD, data_dir=tmp_path / "data",
                        key_cache_seconds=0)
    svc = KeyManagementService(settings)
    key = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="app", name="signer")
    before = (await svc.use_key("signer", "SIGN", b"before")).signature
    acknowledged = svc.audit.size  # type: ignore[attr-defined]

    fault.full = True
    refused: dict[str, str] = {}
    for what, call in (("sign", lambda: svc.use_key("signer", "SIGN", b"during")),
                       ("create", lambda: svc.create_key(usage="SIGNING", algorithm="Ed25519",
                                                         owner="app", name="during"))):
        with pytest.raises((AuditStorageError, StorageError)) as caught:
            await call()
        refused[what] = caught.value.message
    fault.full = False  # space is back: this chain still refuses, by design
    with pytest.raises(AuditStorageError) as still:
        await svc.use_key("signer", "SIGN", b"space back")
    health = (await svc.health_check())["components"]["audit"]["status"]
    await svc.close()

    reopened = KeyManagementService(settings)  # the next start
    signed = await reopened.use_key("signer", "SIGN", b"reopened")
    # Entries between the last acknowledged one and the first of the new start: written
    # before the failed fsync, refused to their callers, and still in the log.
    logged_but_refused = reopened.last_audit["signer"].sequence - acknowledged - 1
    assert await reopened.use_key("signer", "VERIFY", b"before", signature=before)
    made = await reopened.create_key(usage="SIGNING", algorithm="Ed25519", owner="app",
                                     name="during")
    await reopened.close()
    result = verify_folder(tmp_path / "data" / "audit", check=verify_signature)
    print(f"FIGURE disk-fsync-failure[ENOSPC on fsync, prod]: sign -> {refused['sign']}; "
          f"create -> {refused['create']}; after space returns, same process: "
          f"{still.value.message} (health {health}); next start: sign ok "
          f"({signed.key_id == key.key_id}), create ok ({made.name}), chain "
          f"{'verified' if result.ok else 'FAILED'} ({result.entries} entries); "
          f"entries refused to callers but kept in the log: {logged_but_refused}")
    assert refused["sign"] == "Audit event storage failed: fsync failed: No space left on device"
    # A create's first store write is its intent (store/intents.py): refused before the
    # provider makes anything.
    assert refused["create"].startswith("Key store write failed: intents/")
    assert refused["create"].endswith("No space left on device")
    assert "until reopened" in still.value.message or "fsync failed" in still.value.message
    assert health == "unhealthy"
    assert signed.key_id == key.key_id and result.ok, result.finding


async def test_a_catalog_write_refused_after_the_audit_entry_is_withdrawn_and_cleaned_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills between a version's material and its catalog record (the narrowest
    window, also hit when the Kubernetes API goes away there): the chain, which already
    announced the version, gets an error entry for the same key ID, and the material,
    never committed and never used, is removed: no orphan."""
    from qkms.audit.encoding import decode, is_entry
    from qkms.audit.store import iter_log
    from qkms.store.records import FileRecordStore

    svc = KeyManagementService(Settings(data_dir=tmp_path / "data"))
    key = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="app", name="kept")
    real_write = FileRecordStore._write

    def full_for_keys(store: FileRecordStore, kind: str, name: str, data: bytes, *,
                      exclusive: bool) -> bool:  # a new record (create) or a changed one (put)
        if kind == "keys":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(store, kind, name, data, exclusive=exclusive)

    monkeypatch.setattr(FileRecordStore, "_write", full_for_keys)
    refused = {}
    for what, call in (("create", lambda: svc.create_key(usage="SIGNING", algorithm="Ed25519",
                                                         owner="app", name="new")),
                       ("rotate", lambda: svc.rotate_key("kept"))):
        with pytest.raises((StorageError, RotationFailedError)) as caught:
            await call()
        refused[what] = caught.value.message
    monkeypatch.undo()
    still_signs = (await svc.use_key("kept", "SIGN", b"x")).key_id == key.key_id
    await svc.close()
    entries = [decode(r.block) for r in iter_log(tmp_path / "data" / "audit")
               if is_entry(r.block)]
    withdrawn = {e["keyId"] for e in entries if e["result"] == "error" and e.get("keyId")}
    announced = {e["keyId"] for e in entries
                 if e["result"] == "success" and e["operation"] in ("CREATE", "ROTATE")}
    referenced = {v.key_id for r in svc.catalog.all() for v in r.versions}
    orphans = sorted(set(svc.sealed.list("material")) - referenced)
    uncommitted = announced - referenced
    print(f"FIGURE disk-full-between-writes[catalog refused after the audit entry]: create -> "
          f"{refused['create']}; rotate -> {refused['rotate']}; announced but uncommitted "
          f"versions {len(uncommitted)}, each withdrawn by an error entry: "
          f"{uncommitted <= withdrawn}; orphaned material {len(orphans)}; old key signs: "
          f"{(await svc.use_key('kept', 'SIGN', b'x')).key_id == key.key_id}")
    assert refused["create"].startswith("Key store write failed: keys/new")
    assert "Key store write failed: keys/kept" in refused["rotate"]
    assert len(uncommitted) == 2 and uncommitted <= withdrawn
    assert not orphans and still_signs
