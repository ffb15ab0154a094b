"""No key material and no plaintext in any entry, export, search output, report or
``auditEvent``: a real service writes to a real chain, then everything is scanned for
every secret (raw, hex and base64, whole and as a 16-byte prefix)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from qkms.audit.car import export_car
from qkms.audit.chain import AuditChain
from qkms.audit.reports import build, render
from qkms.audit.search import Query, search
from qkms.config import Settings
from qkms.crypto import verify_signature
from qkms.errors import QkmsError
from qkms.providers import software
from qkms.service import KeyManagementService
from tests.audit.helpers import AuditKey

PLAINTEXT = b"TOP-SECRET plaintext that must never reach the audit trail 4242"


def forms(secret: bytes) -> list[bytes]:
    found = []
    for piece in (secret, secret[:16]):
        found += [piece, piece.hex().encode(), base64.b64encode(piece).rstrip(b"="),
                  base64.urlsafe_b64encode(piece).rstrip(b"=")]
    return [f for f in found if len(f) >= 16]


async def test_no_secret_reaches_any_audit_output(tmp_path, clock):
    chain = AuditChain(tmp_path / "data" / "audit", signer=AuditKey(), checkpoint_every=7)
    events = []
    chain.listen(lambda entry: events.append(json.dumps(entry.to_dict(), default=str)))
    svc = KeyManagementService(Settings(data_dir=tmp_path / "data"), audit=chain, clock=clock)
    secrets = [PLAINTEXT]

    signing = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="leaks")
    await svc.use_key(signing.key_id, "SIGN", PLAINTEXT)
    aes = await svc.create_key(usage="ENCRYPTION", algorithm="AES-256-GCM", owner="leaks")
    token = (await svc.use_key(aes.key_id, "ENCRYPT", PLAINTEXT)).ciphertext
    assert (await svc.use_key(aes.key_id, "DECRYPT", token)).plaintext == PLAINTEXT
    kem = await svc.create_key(usage="ENCRYPTION", algorithm="ML-KEM-768", owner="leaks")
    encapsulated = await svc.use_key(kem.key_id, "ENCAPSULATE")
    decapsulated = await svc.use_key(kem.key_id, "DECAPSULATE", encapsulated.ciphertext)
    secrets += [encapsulated.shared_secret, decapsulated.shared_secret]
    hkdf = await svc.create_key(usage="KEY_DERIVATION", algorithm="HKDF-SHA256", owner="leaks")
    secrets.append((await svc.use_key(hkdf.key_id, "DERIVE", b"", context="ctx")).derived_key)
    rotated = await svc.rotate_key(signing.key_id, reason="MANUAL")
    await svc.revoke_key(rotated.new_key_id, "test")
    try:
        await svc.use_key(rotated.new_key_id, "SIGN", PLAINTEXT)
    except QkmsError:
        pass
    for meta in (signing, aes, kem, hkdf):
        record = svc.provider.store.get_json(software.MATERIAL, meta.key_id)
        secrets.append(await svc.provider.wrapper.unwrap(
            meta.key_id, base64.b64decode(record["private"])))
    await chain.close()
    folder = tmp_path / "data" / "audit"

    haystacks: dict[str, bytes] = {}
    for path in folder.rglob("*"):
        if path.is_file():
            haystacks[str(path)] = path.read_bytes()
    car = tmp_path / "audit.car"
    with open(car, "wb") as out:
        export_car(folder, out)
    haystacks["car"] = car.read_bytes()
    haystacks["search"] = "\n".join(json.dumps(e) for e in search(folder, Query())).encode()
    for standard in ("soc2", "gdpr"):
        report = build(folder, standard, check=verify_signature)
        for fmt in ("md", "json", "html"):
            haystacks[f"{standard}.{fmt}"] = render(report, fmt).encode()
    haystacks["events"] = "\n".join(events).encode()
    haystacks["snapshot"] = json.dumps(chain.snapshot(), default=str).encode()

    assert len(events) >= 12 and b"sha256:" in haystacks["search"]
    for name, data in haystacks.items():
        for secret in secrets:
            for form in forms(secret):
                assert form not in data, f"a secret appears in {Path(name).name}"
