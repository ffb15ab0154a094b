"""HASHICORP_VAULT against a real OpenBao: transit keys, fences, deletion, outages, restarts.

The shared suite (``test_shared_suite.py``) covers every algorithm; this file checks what
is particular to Vault, by looking at transit itself through hvac.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import hvac  # noqa: E402 - test dependencies: a missing one fails, never skips
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.serialization import load_der_public_key

from qkms.config import Settings
from qkms.errors import (
    DecryptionError,
    InvalidInputError,
    KeyStateError,
    OperationNotAllowedError,
    ProviderUnavailableError,
    RotationFailedError,
)
from qkms.model.algorithms import ALGORITHMS, resolve_algorithm
from qkms.model.enums import Environment, ProviderType, VersionState
from qkms.providers import (
    capabilities,
    vault,  # noqa: E402
)
from qkms.providers.base import Capability
from qkms.service import AUDIT_KEY, KeyManagementService, parse_token
from tests.support.openbao import OpenBao

pytestmark = pytest.mark.server


@pytest.fixture
def make_vault(tmp_path, clock):
    def make(options: dict[str, str], **overrides) -> KeyManagementService:
        settings = Settings(environment=Environment.DEV, provider=ProviderType.HASHICORP_VAULT,
                            data_dir=tmp_path / "data", provider_options=dict(options),
                            **overrides)
        return KeyManagementService(settings, clock=clock)
    return make


@pytest.fixture
def svc(make_vault, vault_options) -> KeyManagementService:
    return make_vault(vault_options)


@pytest.fixture
def transit(openbao_server: OpenBao):
    client = openbao_server.client()
    return lambda name: client.read(f"transit/keys/{name}")["data"]


def test_the_capability_table_is_what_transit_holds():
    assert capabilities.NATIVE[ProviderType.HASHICORP_VAULT] == set(vault.TRANSIT_TYPES)


async def test_native_keys_are_non_exportable_transit_keys(svc, transit):
    key = await svc.create_key(usage="SIGNING", algorithm="ECDSA-P256", owner="t")
    ref = svc.get_record(key.name).current.provider_ref
    assert ref == {"mount": "transit", "transit_key": key.key_id, "transit_version": 1,
                   "mode": "native"}
    info = transit(key.key_id)
    assert info["type"] == "ecdsa-p256" and info["exportable"] is False
    assert info["deletion_allowed"] is False
    # The recorded public key is Vault's, in SEC1 uncompressed form.
    vault_public = vault.public_raw(resolve_algorithm("ECDSA-P256"),
                                    info["keys"]["1"]["public_key"])
    assert key.public_key == vault_public and len(key.public_key) == 65


@pytest.mark.parametrize("name", ["ECDSA-P256", "RSA-2048", "Ed25519", "ML-DSA-65"])
async def test_signatures_are_the_plain_algorithm_signatures(svc, name):
    key = await svc.create_key(usage="SIGNING", algorithm=name, owner="t")
    signature = (await svc.use_key(key.key_id, "SIGN", b"message")).signature
    if name == "ECDSA-P256":
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key.public_key)
        public.verify(signature, b"message", ec.ECDSA(hashes.SHA256()))  # DER
    elif name == "RSA-2048":  # PSS-SHA256 with the conventional 32-byte salt
        load_der_public_key(key.public_key).verify(
            signature, b"message", padding.PSS(padding.MGF1(hashes.SHA256()), 32),
            hashes.SHA256())
    elif name == "Ed25519":
        assert len(signature) == 64
    else:
        from cryptography.hazmat.primitives.asymmetric.mldsa import MLDSA65PublicKey
        MLDSA65PublicKey.from_public_bytes(key.public_key).verify(signature, b"message")
    assert await svc.use_key(key.key_id, "VERIFY", b"message", signature=signature)


async def test_aead_ciphertexts_are_transit_ciphertexts_bound_to_version_and_context(
        svc, openbao_server):
    key = await svc.create_key(usage="ENCRYPTION", algorithm="ChaCha20-Poly1305", owner="t")
    token = (await svc.use_key(key.key_id, "ENCRYPT", b"secret", context="ctx")).ciphertext
    key_id, body = parse_token(token)
    assert key_id == key.key_id and body.startswith(b"vault:v1:")
    # It is a real transit ciphertext: transit decrypts it given the same associated data.
    aad = b"qkms:v1:" + key.key_id.encode() + b"\x00ctx"
    plain = openbao_server.client().write_data(f"transit/decrypt/{key.key_id}", data={
        "ciphertext": body.decode(), "associated_data": base64.b64encode(aad).decode()})
    assert base64.b64decode(plain["data"]["plaintext"]) == b"secret"
    with pytest.raises(DecryptionError):
        await svc.use_key(key.key_id, "DECRYPT", token, context="other")


async def test_rotation_is_a_transit_rotation_and_only_the_active_version_encrypts(
        svc, transit, openbao_server):
    key = await svc.create_key(usage="ENCRYPTION", algorithm="AES-256-GCM", owner="t")
    old = await svc.use_key(key.key_id, "ENCRYPT", b"v1")
    rotation = await svc.rotate_key(key.name, grace_period="P1D")
    ref = svc.get_record(key.name).current.provider_ref
    assert (ref["transit_key"], ref["transit_version"]) == (key.key_id, 2)
    assert transit(key.key_id)["latest_version"] == 2
    new = await svc.use_key(key.name, "ENCRYPT", b"v2")
    assert new.key_id == rotation.new_key_id
    assert parse_token(new.ciphertext)[1].startswith(b"vault:v2:")
    # The first encrypt under v2 proved it active: Vault now refuses v1 for encryption...
    assert transit(key.key_id)["min_encryption_version"] == 2
    with pytest.raises(hvac.exceptions.InvalidRequest, match="minimum encryption"):
        openbao_server.client().write_data(f"transit/encrypt/{key.key_id}",
                                           data={"plaintext": "eA==", "key_version": 1})
    # ...while v1, in grace, still decrypts.
    assert (await svc.use_key(key.name, "DECRYPT", old)).plaintext == b"v1"


async def test_min_decryption_version_rises_only_past_spent_versions(svc, transit, clock):
    key = await svc.create_key(usage="ENCRYPTION", algorithm="AES-256-GCM", owner="t")
    tokens = [await svc.use_key(key.name, "ENCRYPT", b"v1")]
    v2 = await svc.rotate_key(key.name, grace_period="P2D")
    tokens.append(await svc.use_key(key.name, "ENCRYPT", b"v2"))
    clock.advance(days=1)
    await svc.rotate_key(key.name, grace_period="P7D")  # v3 active, v1 and v2 in grace
    # Revoking v2 alone must not fence v1, which is still in grace.
    await svc.revoke_key(v2.new_key_id, "suspected leak")
    assert transit(key.key_id)["min_decryption_version"] == 1
    assert (await svc.use_key(key.name, "DECRYPT", tokens[0])).plaintext == b"v1"
    # v1's grace ends: v1 retired, v2 revoked, so Vault may refuse both.
    clock.advance(days=1, seconds=1)
    assert "retired" in (await svc.tick())[key.name]
    assert transit(key.key_id)["min_decryption_version"] == 3
    # A retired v1 next to a grace v2 keeps v2 usable.
    other = await svc.create_key(usage="ENCRYPTION", algorithm="AES-256-GCM", owner="t")
    await svc.rotate_key(other.name, immediate=True)  # v1 retired at once
    grace = await svc.use_key(other.name, "ENCRYPT", b"v2")
    await svc.rotate_key(other.name, grace_period="P1D")  # v2 in grace
    assert transit(other.key_id)["min_decryption_version"] == 2
    assert (await svc.use_key(other.name, "DECRYPT", grace)).plaintext == b"v2"


async def test_a_migration_starts_a_new_transit_key(svc, transit):
    key = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="t")
    rotation = await svc.rotate_key(key.name, algorithm="ML-DSA-65")
    ref = svc.get_record(key.name).current.provider_ref
    assert ref["transit_key"] == rotation.new_key_id and ref["transit_version"] == 1
    assert transit(rotation.new_key_id)["type"] == "mldsa-65"
    assert transit(key.key_id)["latest_version"] == 1


async def test_envelope_keys_are_wrapped_by_transit_and_survive_a_cold_cache(
        make_vault, vault_options, openbao_server, tmp_path):
    svc = make_vault(vault_options)
    key = await svc.create_key(usage="ENCRYPTION", algorithm="ML-KEM-768", owner="t")
    assert key.provider_mode == "envelope"
    record = svc.sealed.get_json("material", key.key_id)
    assert record["wrapper"] == "vault-transit"
    blob = json.loads(base64.b64decode(record["private"]))
    assert blob["mount"] == "transit" and blob["key"] == "qkms-wrap"
    assert blob["ciphertext"].startswith("vault:v")
    assert openbao_server.client().read("transit/keys/qkms-wrap")["data"]["type"] == \
        "aes256-gcm96"
    encap = await svc.use_key(key.key_id, "ENCAPSULATE")
    # A new service (another replica, a restart) has no cache: it unwraps through Vault.
    fresh = make_vault(vault_options, key_cache_seconds=0)
    decap = await fresh.use_key(key.key_id, "DECAPSULATE", encap.ciphertext)
    assert decap.shared_secret == encap.shared_secret


async def test_deletion_soft_deletes_then_deletes_the_transit_key(svc, transit, clock,
                                                                  openbao_server):
    key = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="t")
    await svc.rotate_key(key.name, grace_period="P1D")
    await svc.schedule_key_deletion(key.name, "P7D")
    assert transit(key.key_id)["soft_deleted"] is True  # OpenBao refuses every use now
    with pytest.raises(hvac.exceptions.VaultError, match="soft-deleted"):
        openbao_server.client().write_data(f"transit/sign/{key.key_id}",
                                           data={"input": "eA=="})
    await svc.cancel_key_deletion(key.name)
    assert transit(key.key_id)["soft_deleted"] is False
    assert transit(key.key_id)["deletion_allowed"] is False
    await svc.use_key(key.name, "SIGN", b"still works")
    await svc.schedule_key_deletion(key.name, "P7D")
    clock.advance(days=7, seconds=1)
    await svc.tick()
    assert (await svc.get_key(key.key_id)).state is VersionState.DESTROYED
    assert openbao_server.client().read(f"transit/keys/{key.key_id}") is None
    assert svc.sealed.get_json(vault.STATE, key.key_id) is None


async def test_native_rsa_keys_sign_only_a_known_gap(svc):
    """Transit RSA decryption takes no OAEP label; qkms binds version and context as one."""
    key = await svc.create_key(usage="ENCRYPTION", algorithm="RSA-2048", owner="t")
    assert key.provider_mode == "native"
    token = await svc.use_key(key.key_id, "ENCRYPT", b"m")  # public-key encryption: software
    with pytest.raises(OperationNotAllowedError, match="OAEP label"):
        await svc.use_key(key.key_id, "DECRYPT", token)


def test_options_accept_keypolicy_names_and_never_show_the_token():
    options = vault.VaultOptions.from_options(
        {"address": "https://vault.example:8200/", "mountPath": "/kms/", "token": "s.secret"})
    assert (options.address, options.mount, options.timeout) == (
        "https://vault.example:8200", "kms", 5.0)
    assert "s.secret" not in repr(options)
    # The registry merges the policy's settings over the operator's environment: they win.
    merged = {"VAULT_ADDR": "http://env:8200", "VAULT_TOKEN": "t", "address": "http://policy"}
    assert vault.VaultOptions.from_options(merged).address == "http://policy"
    with pytest.raises(InvalidInputError, match="VAULT_TOKEN"):
        vault.VaultOptions.from_options({"VAULT_ADDR": "http://127.0.0.1:1"})
    with pytest.raises(InvalidInputError, match="VAULT_CLIENT_TIMEOUT"):
        vault.VaultOptions.from_options({"VAULT_ADDR": "x", "VAULT_TOKEN": "t",
                                         "VAULT_CLIENT_TIMEOUT": "soon"})


async def test_a_bad_token_is_unavailable_without_showing_it(make_vault, vault_options):
    svc = make_vault({**vault_options, "VAULT_TOKEN": "s.not-the-token"})
    with pytest.raises(ProviderUnavailableError, match="permission denied") as caught:
        await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="t")
    assert "s.not-the-token" not in str(caught.value)
    health = await svc.health_check()
    assert health["components"]["provider"]["status"] == "unhealthy"
    assert "s.not-the-token" not in json.dumps(health)


async def test_health_reports_the_server(svc, openbao_server):
    provider = (await svc.health_check())["components"]["provider"]
    assert provider["status"] == "healthy" and provider["address"] == openbao_server.address
    assert provider["version"].startswith("2.")


# -- a real server on disk: restarts and outages ------------------------------------------

async def test_keys_and_signatures_survive_a_restart_on_raft_storage(make_openbao_raft,
                                                                     make_vault):
    server = make_openbao_raft()
    svc = make_vault(server.options())
    ed = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="t")
    ml = await svc.create_key(usage="SIGNING", algorithm="ML-DSA-44", owner="t")
    aes = await svc.create_key(usage="ENCRYPTION", algorithm="AES-256-GCM", owner="t")
    kem = await svc.create_key(usage="ENCRYPTION", algorithm="ML-KEM-768", owner="t")
    signatures = {k.key_id: (await svc.use_key(k.key_id, "SIGN", b"before")).signature
                  for k in (ed, ml)}
    token = await svc.use_key(aes.key_id, "ENCRYPT", b"kept")
    encap = await svc.use_key(kem.key_id, "ENCAPSULATE")
    await svc.rotate_key(ed.name, grace_period="P1D")

    server.restart()  # the static seal unseals it; raft kept the keys

    after = make_vault(server.options(), key_cache_seconds=0)
    for key_id, signature in signatures.items():
        assert await after.use_key(key_id, "VERIFY", b"before", signature=signature)
    assert (await after.use_key(aes.key_id, "DECRYPT", token)).plaintext == b"kept"
    decap = await after.use_key(kem.key_id, "DECAPSULATE", encap.ciphertext)
    assert decap.shared_secret == encap.shared_secret
    new = await after.use_key(ed.name, "SIGN", b"after")
    assert await after.use_key(ed.name, "VERIFY", b"after", signature=new.signature)
    assert server.client().read(f"transit/keys/{ed.key_id}")["data"]["latest_version"] == 2


async def test_an_outage_is_reported_within_the_timeout_and_nothing_is_lost(make_openbao_raft,
                                                                            make_vault):
    server = make_openbao_raft()
    # No key cache: envelope keys then need Vault for every private operation too.
    svc = make_vault(server.options(VAULT_CLIENT_TIMEOUT="0.5"), key_cache_seconds=0)
    ed = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="t")
    aes = await svc.create_key(usage="ENCRYPTION", algorithm="AES-256-GCM", owner="t")
    kem = await svc.create_key(usage="ENCRYPTION", algorithm="ML-KEM-768", owner="t")
    token = await svc.use_key(aes.key_id, "ENCRYPT", b"kept")
    encap = await svc.use_key(kem.key_id, "ENCAPSULATE")
    signature = (await svc.use_key(ed.key_id, "SIGN", b"m")).signature
    keys_before = len(svc.user_records())
    prefix = f"KMS provider unavailable: HASHICORP_VAULT at {server.address}: "

    calls = {
        "sign": lambda: svc.use_key(ed.key_id, "SIGN", b"m"),
        "encrypt": lambda: svc.use_key(aes.key_id, "ENCRYPT", b"m"),
        "decrypt": lambda: svc.use_key(aes.key_id, "DECRYPT", token),
        "decapsulate": lambda: svc.use_key(kem.key_id, "DECAPSULATE", encap.ciphertext),
        "create native": lambda: svc.create_key(usage="SIGNING", algorithm="Ed25519",
                                                owner="t"),
        "create envelope": lambda: svc.create_key(usage="ENCRYPTION", algorithm="X-Wing",
                                                  owner="t"),
    }

    async def all_fail(reason: str) -> None:
        for what, call in calls.items():
            start = time.monotonic()
            with pytest.raises(ProviderUnavailableError) as caught:
                await call()
            assert time.monotonic() - start < 1.5, what
            assert str(caught.value).startswith(prefix + reason), (what, str(caught.value))
        with pytest.raises(RotationFailedError, match="KMS provider unavailable") as rotation:
            await svc.rotate_key(ed.name)
        assert rotation.value.retryable
        health = await svc.health_check()
        assert health["components"]["provider"]["status"] == "unhealthy"
        # Public operations need no provider: they keep working.
        assert await svc.use_key(ed.key_id, "VERIFY", b"m", signature=signature)

    server.pause()  # accepts connections, never answers
    try:
        await all_fail("no answer within 0.5s")
    finally:
        server.resume()
    assert (await svc.use_key(aes.key_id, "DECRYPT", token)).plaintext == b"kept"

    server.stop()  # nothing listens: refused at once
    await all_fail("connection refused")
    server.start()  # same raft storage, unsealed by the static seal
    await asyncio.sleep(0)

    # Nothing half-made was kept, and everything made before still works.
    assert len(svc.user_records()) == keys_before
    audit_key = svc.catalog.get(AUDIT_KEY).current.key_id  # qkms's own, made on first use
    assert [k for k in svc.sealed.list("material") if k != audit_key] == [kem.key_id]
    assert (await svc.use_key(aes.key_id, "DECRYPT", token)).plaintext == b"kept"
    decap = await svc.use_key(kem.key_id, "DECAPSULATE", encap.ciphertext)
    assert decap.shared_secret == encap.shared_secret
    rotated = await svc.rotate_key(ed.name, grace_period="P1D")
    new = await svc.use_key(ed.name, "SIGN", b"after")
    assert new.key_id == rotated.new_key_id
    assert await svc.use_key(ed.key_id, "VERIFY", b"m", signature=signature)


async def test_a_revoked_whole_key_is_refused_even_though_vault_keeps_its_latest(svc,
                                                                                 transit):
    """Vault cannot fence its latest version: qkms refuses it, and says so."""
    key = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="t")
    await svc.revoke_key(key.name, "compromised")
    assert transit(key.key_id)["min_decryption_version"] == 1
    with pytest.raises(KeyStateError):
        await svc.use_key(key.name, "SIGN", b"m")


def test_capability_of_the_provider_is_the_table(vault_options, tmp_path):
    from qkms.store.kek import Sealer
    from qkms.store.records import MemoryRecordStore
    from qkms.store.sealed import SealedStore
    provider = vault.VaultProvider(vault.VaultOptions.from_options(vault_options),
                                   SealedStore(MemoryRecordStore(), Sealer(bytes(32))))
    for algorithm in ALGORITHMS:
        expected = (Capability.NATIVE if algorithm.name in vault.TRANSIT_TYPES
                    else Capability.ENVELOPE)
        assert provider.capability(algorithm) is expected
