"""Leak scan: no private key, plaintext or credential in anything qkms shows or writes.

One end-to-end run drives every surface with long random plaintexts and bearer tokens:

(a) the Python API across every algorithm (create, sign, verify, encrypt, decrypt, KEM,
    derive, import, rotate, revoke, backup), refused operations and bad input;
(b) the HTTP data plane (standalone directory, tokens file) with good and bad requests;
(c) the ``qkms`` command, errors included; (d) ``qkms serve --once`` (projections, statuses);
(e) the real operator process against the real kube-apiserver, logged in as its own
    ServiceAccount: Events, ManagedKey statuses, ConfigMaps, every Secret (the
    ``qkms-rec-*`` records hold only sealed material), its log and data plane;
(f) the audit trails: ``qkms audit search``, SOC 2 and GDPR reports, verify and CAR export.

Then every private key is read back from each store (``material/<key_id>``, the stored
form) and expanded into the forms it is also known by (PKCS#8 DER and PEM, SEC 1 and
PKCS#1, RSA's d/p/q, composite and X-Wing halves); with the plaintexts, the tokens and the
master keys these are the secrets. Each is searched for as bytes, hex (both cases), base64
and base64url (padded, unpadded, and at the two other alignments inside longer base64),
Python's bytes repr and PEM lines, over every artifact collected: logs (``caplog`` and the
processes' output), exception texts and tracebacks, HTTP answers, CLI output, files the runs
wrote (the sealed stores, audit segments, projections, statuses, backups), Kubernetes objects
with Secret data decoded. Needles shorter than 16 bytes are skipped (false positives); the
outputs a caller asked for (a DECRYPT's plaintext) are checked and then left out.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import hashlib
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import traceback
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, mlkem, rsa, x25519

from qkms import backup
from qkms.config import Settings
from qkms.model.algorithms import ALGORITHMS
from qkms.model.enums import Environment
from qkms.providers.software import MATERIAL
from qkms.server.app import start_data_plane
from qkms.server.auth import TokensFile
from qkms.service import KeyManagementService
from qkms.standalone import Standalone
from qkms.store.kek import Sealer, parse_kek
from qkms.store.records import FileRecordStore
from qkms.store.sealed import SealedStore
from tests.support.server_process import free_port

ROOT = Path(__file__).resolve().parents[2]
MIN_NEEDLE = 16
GRAM = 8  # the prefilter's k-gram: any needle of 15+ bytes covers one aligned gram
NS = "payments"
KEM = {"ML-KEM-512", "ML-KEM-768", "ML-KEM-1024", "X-Wing"}
NO_PEM = {"Falcon-512", "Falcon-1024", "ML-KEM-512", "Ed25519+ML-DSA-65", "X-Wing",
          "AES-256-GCM", "ChaCha20-Poly1305", "HKDF-SHA256"}


# -- secrets and their forms ---------------------------------------------------------------

def encodings(data: bytes) -> dict[str, bytes]:
    """The ways ``data`` shows up in text: hex, base64 at any alignment, a bytes repr."""
    out = {"bytes": data, "hex": data.hex().encode(), "HEX": data.hex().upper().encode(),
           "repr": repr(data)[2:-1].encode()}
    for name, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
        full = encode(data)
        out[name] = full
        out[f"{name} unpadded"] = full.rstrip(b"=")
        for shift in (0, 1, 2):  # inside a longer base64 text, at each byte alignment
            text = encode(bytes(shift) + data)
            core = text[4:] if shift else text  # the first group mixes in what precedes
            out[f"{name} +{shift}"] = core[:-4] if (len(data) + shift) % 3 else core
    return {k: v for k, v in out.items() if len(v) >= MIN_NEEDLE}


def pem_forms(pem: bytes, public: bytes) -> dict[str, bytes]:
    """The PEM text and each body line, except lines that only encode public parts (an RSA
    modulus, an EC point): those are published on purpose."""
    lines = [line for line in pem.splitlines() if line and not line.startswith(b"-----")]
    return {"PEM": pem, **{f"PEM line {i}": line for i, line in enumerate(lines)
                          if len(line) >= MIN_NEEDLE
                          and base64.b64decode(line + b"=" * (-len(line) % 4)) not in public}}


@dataclass
class Secret:
    label: str
    forms: dict[str, bytes]


def _der_pem(key: Any, fmt: serialization.PrivateFormat) -> tuple[bytes, bytes]:
    none = serialization.NoEncryption()
    return (key.private_bytes(serialization.Encoding.DER, fmt, none),
            key.private_bytes(serialization.Encoding.PEM, fmt, none))


def _cryptography_key(algorithm: str, raw: bytes) -> Any:
    if algorithm == "Ed25519":
        return ed25519.Ed25519PrivateKey.from_private_bytes(raw)
    if algorithm.startswith("ECDSA-"):
        curve = ec.SECP256K1() if algorithm == "ECDSA-secp256k1" else ec.SECP256R1()
        return ec.derive_private_key(int.from_bytes(raw, "big"), curve)
    if algorithm.startswith("RSA-"):
        return serialization.load_der_private_key(raw, password=None)
    if algorithm.startswith("ML-DSA-"):
        return getattr(mldsa, f"MLDSA{algorithm[-2:]}PrivateKey").from_seed_bytes(raw)
    if algorithm in ("ML-KEM-768", "ML-KEM-1024"):
        return getattr(mlkem, f"MLKEM{algorithm[7:]}PrivateKey").from_seed_bytes(raw)
    if algorithm == "X25519":
        return x25519.X25519PrivateKey.from_private_bytes(raw)
    return None


def private_forms(label: str, algorithm: str, raw: bytes) -> list[Secret]:
    """A stored private key and the other encodings it is known by."""
    if algorithm == "Ed25519+ML-DSA-65":  # ML-DSA-65 seed || Ed25519 key
        return [Secret(f"{label} stored", encodings(raw)),
                *private_forms(f"{label} ML-DSA half", "ML-DSA-65", raw[:32]),
                *private_forms(f"{label} Ed25519 half", "Ed25519", raw[32:])]
    if algorithm == "X-Wing":  # seed; expanded as the CFRG draft does: ML-KEM d||z, X25519
        expanded = hashlib.shake_256(raw).digest(96)
        return [Secret(f"{label} stored", encodings(raw)),
                *private_forms(f"{label} ML-KEM half", "ML-KEM-768", expanded[:64]),
                *private_forms(f"{label} X25519 half", "X25519", expanded[64:])]
    found = [Secret(f"{label} stored", encodings(raw))]
    key = _cryptography_key(algorithm, raw)
    if key is None:
        return found
    formats = {"PKCS#8": serialization.PrivateFormat.PKCS8}
    if algorithm.startswith(("ECDSA-", "RSA-")):  # SEC 1 and PKCS#1
        formats["traditional"] = serialization.PrivateFormat.TraditionalOpenSSL
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    for name, fmt in formats.items():
        der, pem = _der_pem(key, fmt)
        found += [Secret(f"{label} {name} DER", encodings(der)),
                  Secret(f"{label} {name} PEM", pem_forms(pem, public))]
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.private_numbers()
        for name in ("d", "p", "q"):
            value = getattr(numbers, name)
            found.append(Secret(f"{label} RSA {name}",
                                encodings(value.to_bytes((value.bit_length() + 7) // 8, "big"))))
    return found


# -- the haystack ------------------------------------------------------------------------------

class Haystack:
    """Every artifact in one buffer, with an index of aligned k-grams to skip most needles."""

    SEPARATOR = b"\x00\xff\x00artifact\x00\xff\x00"

    def __init__(self, artifacts: dict[str, bytes]) -> None:
        self.labels = list(artifacts)
        self.starts: list[int] = []
        parts, position = [], 0
        for data in artifacts.values():
            self.starts.append(position)
            parts += [data, self.SEPARATOR]
            position += len(data) + len(self.SEPARATOR)
        self.blob = b"".join(parts)
        blob = self.blob
        self.grams = {blob[i:i + GRAM] for i in range(0, len(blob) - GRAM + 1, GRAM)}

    def find(self, needle: bytes) -> list[str]:
        """The artifacts that hold ``needle`` (at least 2*GRAM-1 bytes long)."""
        if not any(needle[o:o + GRAM] in self.grams for o in range(GRAM)):
            return []
        found, start = [], 0
        while (index := self.blob.find(needle, start)) >= 0:
            found.append(self.labels[bisect.bisect_right(self.starts, index) - 1])
            start = index + 1
        return found


@dataclass
class Scan:
    """The secrets used and the artifacts produced, collected stage by stage."""

    secrets: list[Secret] = field(default_factory=list)
    artifacts: dict[str, bytes] = field(default_factory=dict)
    expected_errors: int = 0

    def secret(self, label: str, value: bytes) -> bytes:
        self.secrets.append(Secret(label, encodings(value)))
        return value

    def plaintext(self, label: str, *, binary: bool = False) -> bytes:
        """A long random plaintext, never reused: a hit can only be a leak."""
        value = os.urandom(40) if binary else secrets.token_urlsafe(36).encode()
        return self.secret(f"plaintext {label}", value)

    def token(self, label: str) -> str:
        return self.secret(f"bearer token {label}", secrets.token_urlsafe(32).encode()).decode()

    def add(self, label: str, value: bytes | str | Any) -> None:
        if not isinstance(value, bytes | str):
            value = json.dumps(value, default=repr, ensure_ascii=False)
        data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
        while label in self.artifacts:
            label += "'"
        self.artifacts[label] = data

    def error(self, label: str, exc: BaseException) -> None:
        self.expected_errors += 1
        self.add(f"{label} (error text)", f"{exc}\n{exc!r}\n"
                 + "".join(traceback.format_exception(exc)))

    async def attempt(self, label: str, call: Awaitable[Any]) -> Any:
        """Run a call that may be refused; whatever comes back (answer or error) is scanned."""
        try:
            result = await call
        except Exception as exc:  # every error text is an artifact
            self.error(label, exc)
            return None
        self.add(f"{label} (result)", repr(result))
        return result

    def files(self, label: str, folder: Path, *, skip: Iterable[str] = ("master.key",
                                                                       "backup.key")) -> None:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.name not in skip:
                self.add(f"{label}/{path.relative_to(folder)}", path.read_bytes())

    def store(self, label: str, sealed: SealedStore) -> int:
        """Every private key in a store, read back with its KEK: the material records."""
        names = sealed.list(MATERIAL)
        for key_id in names:
            record = sealed.get_json(MATERIAL, key_id)
            assert record is not None and record.get("wrapper") == "kek"
            self.secrets += private_forms(f"{label} {key_id} {record['algorithm']}",
                                          record["algorithm"], base64.b64decode(record["private"]))
        return len(names)

    def data_dir(self, label: str, folder: Path, kek_file: Path | None = None) -> int:
        """The private keys of an embedded store (``folder/store``) and its master key
        (``folder/master.key``; one per data dir, shared by its environments' stores)."""
        kek_file = kek_file or folder / "master.key"
        kek = parse_kek(kek_file.read_bytes(), str(kek_file))
        self.secret(f"{label} master key", kek)
        return self.store(label, SealedStore(FileRecordStore(folder / "store"), Sealer(kek)))

    def run(self) -> tuple[int, list[tuple[str, str, list[str]]]]:
        haystack = Haystack(self.artifacts)
        hits, forms = [], 0
        for secret in self.secrets:
            for form, needle in secret.forms.items():
                forms += 1
                found = haystack.find(needle)
                if found:
                    hits.append((secret.label, form, sorted(set(found))))
        return forms, hits


# -- (a) the Python API ---------------------------------------------------------------------

def key_plan() -> list[tuple[str, str]]:
    """One key per algorithm and kind of use: sign, encrypt (or encapsulate), derive."""
    plan = []
    for info in ALGORITHMS:
        for usage in ("SIGNING", "ENCRYPTION", "KEY_DERIVATION"):
            if usage in {u.value for u in info.usages}:
                plan.append((info.name, usage))
    return plan


async def exercise(scan: Scan, svc: KeyManagementService, algorithm: str, usage: str,
                   tag: str) -> Any:
    meta = await svc.create_key(usage=usage, algorithm=algorithm, owner="leak-scan",
                                name=f"{tag}-{usage.lower().replace('_', '-')}-"
                                     f"{algorithm.lower().replace('+', '-')}")
    scan.add(f"{tag} create {algorithm}", meta.model_dump_json())
    key, where = meta.key_id, f"{tag} {algorithm} {usage}"
    text, binary = scan.plaintext(f"{where} text"), scan.plaintext(f"{where} bin", binary=True)
    if usage == "SIGNING":
        for data in (text, binary):
            signed = await svc.use_key(key, "SIGN", data)
            assert await svc.use_key(meta.name, "VERIFY", data, signature=signed.signature)
            scan.add(f"{where} sign", repr(signed))
        await scan.attempt(f"{where} verify junk", svc.use_key(key, "VERIFY", text,
                                                               signature=binary))
        await scan.attempt(f"{where} encrypt refused", svc.use_key(key, "ENCRYPT", text))
        await scan.attempt(f"{where} derive refused", svc.use_key(key, "DERIVE", text))
    elif usage == "ENCRYPTION":
        for data in (text, binary):
            sealed = await svc.use_key(key, "ENCRYPT", data, context="tenant-a")
            scan.add(f"{where} encrypt", repr(sealed))
            opened = await svc.use_key(key, "DECRYPT", sealed.ciphertext, context="tenant-a")
            assert opened.plaintext == data  # asked for: checked, not scanned
            token = sealed.ciphertext
            tampered = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
            await scan.attempt(f"{where} decrypt tampered", svc.use_key(key, "DECRYPT", tampered))
            await scan.attempt(f"{where} decrypt other context",
                               svc.use_key(key, "DECRYPT", token, context="tenant-b"))
        await scan.attempt(f"{where} decrypt plaintext", svc.use_key(key, "DECRYPT", text))
        await scan.attempt(f"{where} sign refused", svc.use_key(key, "SIGN", text))
        if algorithm in KEM:
            made = await svc.use_key(key, "ENCAPSULATE")
            got = await svc.use_key(key, "DECAPSULATE", made.ciphertext)
            assert got.shared_secret == made.shared_secret
            scan.add(f"{where} encapsulate", repr(made))
            await scan.attempt(f"{where} decapsulate junk", svc.use_key(key, "DECAPSULATE",
                                                                        binary))
    else:
        derived = await svc.use_key(key, "DERIVE", b"", context="session-7", length=64)
        scan.add(f"{where} derive", repr(derived))
        await scan.attempt(f"{where} derive length 0",
                           svc.use_key(key, "DERIVE", b"", context="x", length=0))
        await scan.attempt(f"{where} sign refused", svc.use_key(key, "SIGN", text))
    return meta


async def drive_service(scan: Scan, folder: Path) -> KeyManagementService:
    svc = KeyManagementService(Settings(data_dir=folder, key_cache_seconds=0))
    for event in ("keyCreated", "keyRotated", "keyRevoked", "auditEvent"):
        svc.on(event, lambda payload, e=event: scan.add(f"service event {e}", repr(payload)))
    made = {}
    for algorithm, usage in key_plan():
        made[(algorithm, usage)] = await exercise(scan, svc, algorithm, usage, "api")

    # Rotation, grace, emergency rotation and revocation, then refused uses.
    signer, vault = made[("Ed25519", "SIGNING")], made[("AES-256-GCM", "ENCRYPTION")]
    text = scan.plaintext("api lifecycle")
    token = (await svc.use_key(vault.key_id, "ENCRYPT", text)).ciphertext
    for key in (signer, vault):
        rotated = await svc.rotate_key(key.name, reason="SCHEDULED", grace_period="P1D")
        scan.add("api rotate", repr(rotated))
        await scan.attempt("api sign with grace version",
                           svc.use_key(rotated.old_key_id, "SIGN", text))
    assert (await svc.use_key(vault.name, "DECRYPT", token)).plaintext == text
    scan.add("api rotate compromise", repr(await svc.rotate_key(signer.name,
                                                                reason="COMPROMISE")))
    scan.add("api migrate", repr(await svc.rotate_key(signer.name, algorithm="ML-DSA-65")))
    scan.add("api revoke", await svc.revoke_key(vault.name, "leak scan"))
    await scan.attempt("api decrypt revoked", svc.use_key(vault.name, "DECRYPT", token))
    await scan.attempt("api encrypt revoked", svc.use_key(vault.name, "ENCRYPT", text))
    await scan.attempt("api delete", svc.schedule_key_deletion(signer.name, "P7D"))

    # Bad input of every kind.
    bad = [svc.create_key(usage="SIGNING", algorithm="RSA-1024", owner="x"),
           svc.create_key(usage="NOPE", algorithm="Ed25519", owner="x"),
           svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="x", name="Bad Name"),
           svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="bad\x00owner"),
           svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="x",
                          rotation_schedule="P1D", grace_period="P2D"),
           svc.use_key("key_dev_0123456789abcdef", "SIGN", text),
           svc.use_key("key_prod_0123456789abcdef", "SIGN", text),
           svc.use_key(made[("ECDSA-P256", "SIGNING")].key_id, "FLY", text),
           svc.use_key(made[("ECDSA-P256", "SIGNING")].key_id, "SIGN", 12345),
           svc.use_key(made[("ECDSA-P256", "SIGNING")].key_id, "VERIFY", text),
           svc.rotate_key(signer.name, reason="BORED"),
           svc.revoke_key(signer.name, "")]
    for index, call in enumerate(bad):
        await scan.attempt(f"api bad input {index}", call)

    # Bring your own key: the imported material is a secret too, and so is a rejected one.
    own = scan.secret("imported Ed25519 key", ed25519.Ed25519PrivateKey.generate()
                      .private_bytes_raw())
    scan.add("api import", (await svc.import_key(private=own, usage="SIGNING",
                                                 algorithm="Ed25519", owner="byok"))
             .model_dump_json())
    rejected = scan.secret("rejected RSA import", os.urandom(64))
    await scan.attempt("api import junk", svc.import_key(private=rejected, usage="SIGNING",
                                                         algorithm="RSA-2048", owner="byok"))
    await scan.attempt("api import wrong algorithm", svc.import_key(
        private=own, usage="SIGNING", algorithm="ML-DSA-65", owner="byok"))

    key = scan.secret("backup key", backup.backup_key(folder.parent / "service-backup.key"))
    scan.add("api backup", backup.create(svc, key))
    scan.add("api statistics", await svc.get_statistics())
    scan.add("api health", await svc.health_check())
    scan.add("api list", [m.model_dump_json() for m in await svc.list_keys()])
    scan.add("api catalog", [r.model_dump_json() for r in svc.catalog.all()])
    await svc.close()
    return svc


# -- (b) the data plane over HTTP ------------------------------------------------------------

MANIFESTS = """
apiVersion: v1
kind: Namespace
metadata: {name: payments, labels: {qkms.io/environment: dev}}
---
apiVersion: v1
kind: Namespace
metadata: {name: checkout-prod, labels: {qkms.io/environment: prod}}
"""


def manifests(folder: Path) -> list[str]:
    """A folder of ManagedKeys: one per algorithm and use, projected in every format."""
    folder.mkdir(parents=True)
    names, docs = [], [MANIFESTS]
    for algorithm, usage in key_plan():
        if algorithm == "RSA-4096":
            continue  # slow to generate; the API stage covers it
        name = f"{usage[:3].lower()}-{algorithm.lower().replace('+', '-')}"
        names.append(name)
        docs.append(yaml.safe_dump({
            "apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"usage": usage, "algorithm": algorithm, "owner": "leak-scan",
                     "projection": {"secretName": f"{name}-public",
                                    "configMapName": f"{name}-ref",
                                    "formats": ["PEM", "JWKS", "RAW"]}}}))
    (folder / "keys.yaml").write_text("---\n".join(docs))
    return names


def tokens_file(path: Path, tokens: dict[str, str]) -> Path:
    expired = "2000-01-01T00:00:00+00:00"
    verbs = ["sign", "verify", "encrypt", "decrypt", "encapsulate", "decapsulate", "derive"]
    path.write_text(yaml.safe_dump({
        "tokens": [{"serviceAccount": "payments/app", "token": tokens["app"]},
                   {"serviceAccount": "payments/old", "token": tokens["expired"],
                    "expires": expired},
                   {"serviceAccount": "payments/nobody", "token": tokens["norbac"]},
                   {"serviceAccount": "checkout-prod/app", "token": tokens["prod"]},
                   {"serviceAccount": "payments/auditor", "token": tokens["auditor"]}],
        "grants": [{"serviceAccount": "payments/app", "namespace": NS, "verbs": verbs},
                   {"serviceAccount": "payments/old", "namespace": NS, "verbs": verbs},
                   {"serviceAccount": "checkout-prod/app", "namespace": NS, "verbs": verbs},
                   {"serviceAccount": "payments/auditor", "namespace": NS,
                    "verbs": ["audit"]}]}))
    return path


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Http:
    """Requests whose answers (status, headers, body) are all artifacts."""

    def __init__(self, scan: Scan, session: aiohttp.ClientSession, url: str, label: str):
        self.scan, self.session, self.url, self.label = scan, session, url, label

    async def call(self, method: str, path: str, *, token: str | None = None,
                   body: Any = None, data: bytes | None = None,
                   content_type: str = "application/json", keep: bool = True
                   ) -> tuple[int, Any]:
        headers = {"Content-Type": content_type}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        payload = data if data is not None else (None if body is None else
                                                  json.dumps(body).encode())
        async with self.session.request(method, self.url + path, data=payload,
                                        headers=headers) as rsp:
            raw = await rsp.read()
            status, head = rsp.status, dict(rsp.headers)
        if keep:
            self.scan.add(f"{self.label} {method} {path} -> {status}",
                          f"{status} {head}\n".encode() + raw)
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw

    async def op(self, name: str, operation: str, body: Any, token: str,
                 keep: bool = True) -> tuple[int, Any]:
        return await self.call("POST", f"/v1/keys/{NS}/{name}:{operation}", token=token,
                               body=body, keep=keep)


async def drive_plane(scan: Scan, folder: Path) -> Standalone:
    names = manifests(folder / "manifests")
    tokens = {role: scan.token(f"plane {role}")
              for role in ("app", "expired", "norbac", "prod", "auditor")}
    standalone = Standalone(Settings(data_dir=folder / "data", key_cache_seconds=0),
                            folder / "manifests", folder / "out",
                            say=lambda line: scan.add("plane say", line))
    standalone.refresh()
    await standalone.reconcile_all()
    auth = TokensFile(tokens_file(folder / "tokens.yaml", tokens))
    port = free_port()
    runner = await start_data_plane(standalone, standalone.registry, auth, auth,
                                    f"127.0.0.1:{port}")
    app = tokens["app"]
    try:
        async with aiohttp.ClientSession() as session:
            http = Http(scan, session, f"http://127.0.0.1:{port}", "plane")
            for name in names:
                text = scan.plaintext(f"plane {name}")
                usage = name[:3]
                if usage == "sig":
                    status, signed = await http.op(name, "sign", {"input": b64(text)}, app)
                    assert status == 200, signed
                    await http.op(name, "verify", {"input": b64(text),
                                                   "signature": signed["signature"]}, app)
                    await http.op(name, "verify", {"input": b64(text), "signature": b64(text)},
                                  app)
                    await http.op(name, "encrypt", {"input": b64(text)}, app)
                    await http.op(name, "sign", {"batch_input": [{"input": b64(text)},
                                                                 {"input": "%%%"}]}, app)
                elif usage == "enc":
                    status, sealed = await http.op(name, "encrypt", {
                        "input": b64(text), "context": b64(b"tenant")}, app)
                    assert status == 200, sealed
                    status, opened = await http.op(name, "decrypt", {
                        "ciphertext": sealed["ciphertext"], "context": b64(b"tenant")}, app,
                        keep=False)  # the plaintext asked for: checked, not scanned
                    assert status == 200 and base64.b64decode(opened["plaintext"]) == text
                    token = sealed["ciphertext"]
                    await http.op(name, "decrypt", {"ciphertext": token}, app)  # no context
                    await http.op(name, "decrypt", {"ciphertext": token[:-4] + "AAAA"}, app)
                    await http.op(name, "decrypt", {"ciphertext": text.decode()}, app)
                    await http.op(name, "sign", {"input": b64(text)}, app)
                    status, made = await http.op(name, "encapsulate", {}, app)
                    if status == 200:
                        await http.op(name, "decapsulate", {"ciphertext": made["ciphertext"]},
                                      app)
                        await http.op(name, "decapsulate", {"ciphertext": b64(text)}, app)
                else:
                    await http.op(name, "derive", {"length": 48, "context": b64(b"s")}, app)
                    await http.op(name, "derive", {"length": 10**6}, app)
                    await http.op(name, "sign", {"input": b64(text)}, app)
            # Refusals and malformed requests, each carrying a plaintext or a token.
            text = scan.plaintext("plane refusals")
            body = {"input": b64(text)}
            signer = "sig-ed25519"
            await http.op(signer, "sign", body, "")
            await http.op(signer, "sign", body, scan.token("plane unknown"))
            await http.op(signer, "sign", body, tokens["expired"])
            await http.op(signer, "sign", body, tokens["norbac"])
            await http.op(signer, "sign", body, tokens["prod"])
            await http.op("missing-key", "sign", body, app)
            await http.op(signer, "fly", body, app)
            await http.op(signer, "sign", {"input": b64(text)[:-3]}, app)  # truncated base64
            await http.op(signer, "sign", {"input": b64(text), "plaintext": text.decode()}, app)
            await http.op(signer, "sign", {"input": b64(text), "key_id": text.decode()}, app)
            await http.call("POST", f"/v1/keys/{NS}/{signer}:sign", token=app, data=text,
                            content_type="text/plain")
            await http.call("POST", f"/v1/keys/{NS}/{signer}:sign", token=app,
                            data=b'{"input": "' + text)  # truncated JSON
            await http.call("POST", f"/v1/keys/{NS}/{signer}:sign", token=app,
                            data=json.dumps({"input": b64(text * 30000)}).encode())  # > 1 MiB
            for path in ("/health/keys", "/metrics/keys", "/openapi.json"):
                await http.call("GET", path)
            await http.call("GET", "/audit/keys", token=tokens["auditor"])
            await http.call("GET", "/audit/keys", token=app)
    finally:
        await runner.cleanup()
        for service in standalone.registry.all():
            await service.close()
    return standalone


# -- (c) the command line, (d) qkms serve, (f) the audit commands ---------------------------

class Cli:
    """``python -m qkms`` in a subprocess on its own data dir, debug logging on."""

    def __init__(self, scan: Scan, cwd: Path, data_dir: Path) -> None:
        self.scan, self.cwd = scan, cwd
        self.env = {**os.environ, "QKMS_DATA_DIR": str(data_dir), "DEBUG": "key-management:*",
                    "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT)])}

    def __call__(self, *args: str, stdin: bytes = b"", ok: bool | None = True,
                 keep_stdout: bool = True) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run([sys.executable, "-m", "qkms", *args], input=stdin, env=self.env,
                              capture_output=True, cwd=self.cwd, timeout=180)
        label = "cli " + " ".join(a if len(a) < 40 else a[:37] + "..." for a in args)
        self.scan.add(f"{label} (stderr)", proc.stderr)
        if keep_stdout:
            self.scan.add(f"{label} (stdout)", proc.stdout)
        if ok:
            assert proc.returncode == 0, (args, proc.stderr.decode(errors="replace"))
        elif ok is False:
            assert proc.returncode != 0, (args, proc.stdout[:300])
            self.scan.expected_errors += 1
        return proc


def drive_cli(scan: Scan, folder: Path) -> None:
    folder.mkdir()
    cli = Cli(scan, folder, folder / "data")
    for name, algorithm, usage in [("signer", "Ed25519", "SIGNING"),
                                   ("pq-signer", "ML-DSA-65", "SIGNING"),
                                   ("ecdsa", "ECDSA-secp256k1", "SIGNING"),
                                   ("vault", "AES-256-GCM", "ENCRYPTION"),
                                   ("rsa", "RSA-2048", "ENCRYPTION"),
                                   ("kem", "ML-KEM-768", "ENCRYPTION"),
                                   ("kdf", "HKDF-SHA256", "KEY_DERIVATION")]:
        cli("keys", "create", "--usage", usage, "--algorithm", algorithm, "--owner", "cli",
            "--name", name)
    text = scan.plaintext("cli sign")
    signature = cli("keys", "sign", "signer", stdin=text).stdout
    (folder / "sig.b64").write_bytes(signature)
    cli("keys", "verify", "signer", "--signature", "sig.b64", stdin=text)
    cli("keys", "verify", "signer", "--signature", "sig.b64", stdin=scan.plaintext("cli other"),
        ok=False)
    cli("keys", "sign", "pq-signer", "--encoding", "raw", stdin=text)
    for key in ("vault", "rsa", "kem"):
        plain = scan.plaintext(f"cli {key}", binary=True)
        (folder / f"{key}.bin").write_bytes(plain)
        cli("keys", "encrypt", key, "--in", f"{key}.bin", "--out", f"{key}.tok",
            "--context", "tenant-a")
        back = cli("keys", "decrypt", key, "--in", f"{key}.tok", "--encoding", "raw",
                   "--context", "tenant-a", keep_stdout=False)
        assert back.stdout == plain  # asked for: checked, not scanned
        cli("keys", "decrypt", key, "--in", f"{key}.tok", ok=False)  # wrong context
        cli("keys", "decrypt", key, "--in", f"{key}.bin", ok=False)  # not a token at all
    cli("keys", "encapsulate", "kem", "--out", "kem.ct", "--secret-out", "kem.ss")
    cli("keys", "decapsulate", "kem", "--in", "kem.ct", "--out", "kem.ss2")
    cli("keys", "decapsulate", "kem", "--in", "vault.bin", "--encoding", "raw", ok=False)
    cli("keys", "derive", "kdf", "--context", "session", "--out", "kdf.out")
    cli("keys", "sign", "vault", stdin=text, ok=False)  # operation not allowed for the usage
    cli("keys", "encrypt", "signer", stdin=text, ok=False)
    cli("keys", "verify", "signer", "--signature", "vault.bin", stdin=text, ok=False)
    for fmt in ("pem", "jwks", "raw"):
        cli("keys", "public", "signer", "--format", fmt)
    cli("keys", "public", "vault", ok=False)
    cli("keys", "show", "signer")
    cli("keys", "list")
    cli("keys", "rotate", "signer", "--reason", "COMPROMISE")
    cli("keys", "rotate", "vault", "--grace-period", "P1D")
    cli("keys", "revoke", "ecdsa", "--reason", "leak scan")
    cli("keys", "sign", "ecdsa", stdin=text, ok=False)
    cli("keys", "sign", "nope", stdin=text, ok=False)
    cli("keys", "create", "--usage", "SIGNING", "--algorithm", "RSA-1024", "--owner", "x",
        ok=False)
    # Bring your own key, from a PEM file and from raw bytes; a mismatched import fails.
    imported = ec.generate_private_key(ec.SECP256R1())
    pem = imported.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    scan.secrets += private_forms("cli imported PEM key", "ECDSA-P256", imported
                                  .private_numbers().private_value.to_bytes(32, "big"))
    (folder / "key.pem").write_bytes(pem)
    cli("keys", "import", "--pem", "key.pem", "--usage", "SIGNING", "--owner", "byok",
        "--name", "byok")
    cli("keys", "import", "--pem", "key.pem", "--algorithm", "Ed25519", "--usage", "SIGNING",
        "--owner", "byok", ok=False)
    raw = scan.secret("cli imported raw key", os.urandom(32))
    (folder / "key.raw").write_bytes(raw)
    cli("keys", "import", "--raw", "key.raw", "--usage", "ENCRYPTION", "--owner", "byok",
        "--name", "byok-aes")
    cli("keys", "import", "--raw", "key.pem", "--usage", "ENCRYPTION", "--owner", "byok",
        ok=False)
    cli("backup", "create", "--out", "backup.json")
    scan.add("cli backup file", (folder / "backup.json").read_bytes())
    cli("validate", ok=None)  # the store, the master key and the settings, checked
    scan.data_dir("cli", folder / "data" / "dev", folder / "data" / "master.key")
    scan.secret("cli backup key", parse_kek((folder / "data" / "backup.key").read_bytes(), ""))
    scan.files("cli data", folder / "data")


def drive_serve(scan: Scan, folder: Path) -> None:
    folder.mkdir()
    manifests(folder / "manifests")
    (folder / "manifests" / "broken.yaml").write_text("kind: ManagedKey\nspec: [unclosed\n")
    (folder / "manifests" / "bad.yaml").write_text(yaml.safe_dump({
        "apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
        "metadata": {"name": "bad", "namespace": NS},
        "spec": {"usage": "SIGNING", "algorithm": "RSA-1024", "owner": "x"}}))
    shutil.copy(folder / "manifests" / "keys.yaml", folder / "manifests" / "duplicate.yaml")
    cli = Cli(scan, folder, folder / "data")
    for _ in range(2):  # create, then reconcile what exists
        cli("serve", "--manifests", "manifests", "--out", "out", "--once")
    for env in Environment:
        if (folder / "data" / env.value / "store").exists():
            scan.data_dir(f"serve {env.value}", folder / "data" / env.value,
                          folder / "data" / "master.key")
    scan.files("serve data", folder / "data")
    scan.files("serve out", folder / "out")


async def drive_audit(scan: Scan, folders: dict[str, Path]) -> None:
    """``qkms audit`` search, reports, verify and export over every audit trail written."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT)])}

    async def run(label: str, *args: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "qkms", "audit", *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), timeout=180)
        scan.add(f"audit {label} {' '.join(args[:3])} (stdout)", out)
        scan.add(f"audit {label} {' '.join(args[:3])} (stderr)", err)
        assert proc.returncode == 0 or args[0] == "verify", (label, args, err.decode())

    calls = []
    for label, folder in folders.items():
        assert folder.is_dir(), folder
        data = ["--data-dir", str(folder)]
        calls += [run(label, "search", *data),
                  run(label, "report", "--standard", "soc2", "--format", "json",
                      "--allow-unsigned", *data),
                  run(label, "report", "--standard", "gdpr", "--format", "md",
                      "--allow-unsigned", *data),
                  run(label, "verify", "--json", *data),
                  run(label, "export", "--car", "-", *data)]
    for index in range(0, len(calls), 4):  # two cores: a few at a time
        await asyncio.gather(*calls[index:index + 4])


# -- (e) the operator on the real API server ---------------------------------------------------

async def drive_operator(scan: Scan, cp: Any, kube: Any, kubeconfig: Path, folder: Path) -> Path:
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config

    from qkms.k8s.secret_store import SecretRecordStore, load_or_create_kek_secret
    from tests.support.kubeclient import eventually
    from tests.support.operator_process import OperatorProcess

    for name, labels in ((NS, {"qkms.io/environment": "dev"}),
                         ("shop", {"qkms.io/environment": "prod"})):
        await kube.create("namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                         "metadata": {"name": name, "labels": labels}})
    port = free_port()
    operator = OperatorProcess(
        "qkms.k8s.handlers", kubeconfig=kubeconfig, workdir=folder,
        env={"QKMS_NAMESPACE": "qkms-system", "QKMS_STATE": "secrets", "QKMS_DATA_DIR": "data",
             "QKMS_KEY_CACHE_SECONDS": "0", "QKMS_API_LISTEN": f"127.0.0.1:{port}",
             "DEBUG": "key-management:*"})
    names = manifests(folder / "manifests")
    bodies = [d for d in yaml.safe_load_all((folder / "manifests" / "keys.yaml").read_text())
              if d["kind"] == "ManagedKey"]
    bodies.append({"apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
                   "metadata": {"name": "mismatch", "namespace": "shop"},
                   "spec": {"usage": "SIGNING", "algorithm": "Ed25519", "owner": "x",
                            "environment": "dev"}})
    bodies.append({"apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
                   "metadata": {"name": "invalid", "namespace": NS},  # the server admits it
                   "spec": {"usage": "SIGNING", "algorithm": "Ed25519", "owner": "x",
                            "rotationSchedule": "P1D", "gracePeriod": "P2D"}})
    try:
        await operator.start()
        for body in bodies:
            await kube.create("managedkeys", body, body["metadata"]["namespace"])

        async def settled() -> bool:
            for body in bodies:
                current = await kube.get("managedkeys", body["metadata"]["name"],
                                         body["metadata"]["namespace"])
                status = (current or {}).get("status") or {}
                if not any(c["type"] == "Ready" for c in status.get("conditions") or []):
                    return False
            return True
        await eventually(settled, timeout=90, interval=0.5, what="every ManagedKey reconciled",
                         context=operator.log_tail)
        async def handled() -> bool:  # Kopf has closed the creation cycle (else an
            for name in names[:3]:      # annotation added meanwhile joins its diff base)
                meta = (await kube.get("managedkeys", name, NS))["metadata"]
                if "kopf.qkms.io/last-handled-configuration" not in (meta.get("annotations") or {}):
                    return False
            return True
        await eventually(handled, timeout=30, what="creation handled")
        # Emergency rotation by annotation, revocation by spec, deletion by finalizer.
        await kube.patch("managedkeys", names[0], {"metadata": {"annotations": {
            "qkms.io/rotate": "COMPROMISE"}}}, NS)
        await kube.patch("managedkeys", names[1], {"spec": {"revoked": {"reason": "leak"}}},
                         NS)

        async def acted() -> bool:
            first = await kube.get("managedkeys", names[0], NS)
            second = await kube.get("managedkeys", names[1], NS)
            return (len(first["status"]["versions"]) == 2
                    and second["status"].get("phase") == "Revoked")
        await eventually(acted, timeout=60, interval=0.5, what="rotation and revocation",
                         context=operator.log_tail)
        await kube.delete("managedkeys", names[2], NS)
        await eventually(lambda: _gone(kube, names[2]), timeout=60, what="finalizer ran")
        # The operator's data plane: tokens the cluster never issued, so refusals (with
        # secrets in).
        text = scan.plaintext("operator data plane")
        async with aiohttp.ClientSession() as session:
            http = Http(scan, session, f"http://127.0.0.1:{port}", "operator plane")
            await http.op(names[0], "sign", {"input": b64(text)}, scan.token("operator"))
            await http.op(names[0], "sign", {"input": b64(text)}, "")
            await http.call("GET", "/health/keys")
            await http.call("GET", "/metrics/keys")
    finally:
        await operator.stop()
    scan.add("operator log", operator.log())

    for resource in ("events", "managedkeys", "configmaps", "keypolicies"):
        for item in await kube.list(resource):
            scan.add(f"kube {resource} {item['metadata'].get('namespace')}/"
                     f"{item['metadata']['name']}", item)
    api = k8s_config.new_client_from_config(config_file=str(cp.kubeconfig))  # the test's admin
    core = k8s_client.CoreV1Api(api)
    kek = load_or_create_kek_secret(core, "qkms-system")
    scan.secret("operator master key", kek)
    records = 0
    for item in await kube.list("secrets"):
        meta = item["metadata"]
        if meta["name"] == "qkms-master-key":
            continue  # where the master key lives: searched for everywhere else
        decoded = {k: base64.b64decode(v) for k, v in (item.get("data") or {}).items()}
        records += meta["name"].startswith("qkms-rec-")
        scan.add(f"kube secret {meta['namespace']}/{meta['name']}", item)
        for key, value in decoded.items():
            scan.add(f"kube secret {meta['namespace']}/{meta['name']} [{key}]", value)
    assert records > len(names), "the key records are Secrets in qkms-system"
    keys = 0
    for env in Environment:
        sealed = SealedStore(SecretRecordStore(core, "qkms-system", env.value, watch=False),
                             Sealer(kek))
        keys += scan.store(f"operator {env.value}", sealed)
    assert keys > len(names)
    run = operator.workdir / "run-1" / "data"
    scan.files("operator data", run)
    return run / "dev" / "audit"


async def _gone(kube: Any, name: str) -> bool:
    return await kube.get("managedkeys", name, NS) is None


# -- the test -------------------------------------------------------------------------------

@pytest.mark.server
async def test_no_private_key_or_plaintext_leaks_anywhere(tmp_path: Path, control_plane: Any,
                                                          kube: Any, operator_kubeconfig: Path,
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    caplog.set_level(logging.DEBUG)
    scan = Scan()
    await drive_service(scan, tmp_path / "service")
    scan.data_dir("api", tmp_path / "service")
    scan.files("api data", tmp_path / "service")
    await drive_plane(scan, tmp_path / "plane")
    scan.data_dir("plane dev", tmp_path / "plane/data/dev", tmp_path / "plane/data/master.key")
    scan.files("plane data", tmp_path / "plane" / "data")
    scan.files("plane out", tmp_path / "plane" / "out")
    await asyncio.to_thread(drive_cli, scan, tmp_path / "cli")
    await asyncio.to_thread(drive_serve, scan, tmp_path / "serve")
    operator_audit = await drive_operator(scan, control_plane, kube, operator_kubeconfig,
                                          tmp_path / "operator")
    await drive_audit(scan, {"api": tmp_path / "service", "plane": tmp_path / "plane/data/dev",
                             "cli": tmp_path / "cli/data", "serve": tmp_path / "serve/data/dev",
                             "operator": operator_audit})
    scan.add("caplog", caplog.text)
    scan.add("caplog messages", "\n".join(r.getMessage() for r in caplog.records))

    forms, hits = scan.run()
    size = sum(len(a) for a in scan.artifacts.values())
    print(f"leak scan: {len(scan.secrets)} secrets × {forms} forms over "
          f"{len(scan.artifacts)} artifacts ({size} bytes): {len(hits)} found")
    print(f"leak scan detail: {scan.expected_errors} refused or failed calls scanned, "
          f"{sum(1 for s in scan.secrets if 'plaintext' in s.label)} plaintexts, "
          f"{sum(1 for s in scan.secrets if 'stored' in s.label)} stored private keys")
    assert len(scan.secrets) > 300 and scan.expected_errors > 100
    assert not hits, "\n".join(f"{secret} as {form} in {where}"
                               for secret, form, where in hits[:40])


def test_the_scanner_finds_every_form_it_claims() -> None:
    """A positive control: each form, embedded in longer text at any offset, is found, and
    the public-only lines of a private PEM are not searched for."""
    scan = Scan()
    secret = scan.secret("control", os.urandom(45))
    for shift in range(3):
        padded = os.urandom(shift) + secret + os.urandom(5)
        scan.add(f"base64 {shift}", b"x" + base64.b64encode(padded) + b"y")
        scan.add(f"base64url {shift}", base64.urlsafe_b64encode(padded).rstrip(b"="))
    scan.add("hex", json.dumps({"key": secret.hex().upper()}))
    scan.add("repr", f"log: private={secret!r}")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raw = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    scan.secrets += private_forms("control RSA", "RSA-2048", raw)
    scan.add("public", key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    scan.add("pem", b"data: " + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))
    _, hits = scan.run()
    where = {artifact for secret, _, found in hits for artifact in found}
    assert where >= {f"base64 {s}" for s in range(3)} | {f"base64url {s}" for s in range(3)}
    assert {"hex", "repr", "pem"} <= where and "public" not in where
