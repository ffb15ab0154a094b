"""AZURE_KEY_VAULT against the Key Vault keys REST emulator (tests/support/azure_keyvault.py).

The emulator is ours (no Key Vault emulator exists in any registry); the tests that
check its faithfulness to the documented REST shapes are at the end.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
import urllib.error
import urllib.request

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.serialization import load_der_public_key

from qkms.config import Settings
from qkms.errors import InvalidInputError, OperationNotAllowedError, ProviderUnavailableError
from qkms.model.enums import Environment, ProviderType, VersionState
from qkms.service import KeyManagementService
from tests.support.servers import require_server

try:
    from azure.core.exceptions import HttpResponseError
    from azure.keyvault.keys.crypto import SignatureAlgorithm

    from qkms.providers.azure import azure_name
except ImportError:  # fails under QKMS_REQUIRE_SERVERS=1, skips loudly elsewhere
    require_server("Azure Key Vault emulator",
                   "azure-keyvault-keys is missing: pip install 'qkms[azure]'", module_level=True)
from tests.support.azure_keyvault import KeyVaultEmulator, emulator_options, unb64u

pytestmark = pytest.mark.server


@pytest.fixture
def make_azure(azure_vault: KeyVaultEmulator, tmp_path, clock):
    def make(cache_seconds: float = 60.0, **options: str) -> KeyManagementService:
        settings = Settings(environment=Environment.DEV, provider=ProviderType.AZURE_KEY_VAULT,
                            data_dir=tmp_path / "data", key_cache_seconds=cache_seconds,
                            provider_options={**emulator_options(azure_vault), **options})
        return KeyManagementService(settings, clock=clock)
    return make


@pytest.fixture
def azure(make_azure) -> KeyManagementService:
    return make_azure()


@pytest.mark.parametrize(("algorithm", "kty", "crv"), [
    ("ECDSA-P256", "EC", "P-256"), ("ECDSA-secp256k1", "EC", "P-256K"), ("RSA-2048", "RSA", None)])
async def test_native_keys_live_in_the_vault(azure, azure_vault, algorithm, kty, crv):
    key = await azure.create_key(usage="SIGNING", algorithm=algorithm, owner="az")
    assert key.provider_mode == "native"
    version = azure_vault.keys[azure_name(key.key_id)][-1]
    assert (version.kty, version.crv) == (kty, crv)
    assert version.tags == {"managed-by": "qkms", "qkms-key-id": key.key_id,
                            "qkms-state": "active"}
    record = azure.catalog.get(key.name).current.provider_ref
    assert record == {"name": azure_name(key.key_id), "version": version.version,
                      "mode": "native"}
    before = azure_vault.requests
    signed = await azure.use_key(key.key_id, "SIGN", b"in the vault")
    assert azure_vault.requests > before  # signed by the vault, not locally
    assert await azure.use_key(key.key_id, "VERIFY", b"in the vault", signature=signed.signature)


async def test_rotation_is_a_new_version_of_the_same_vault_key(azure, azure_vault):
    key = await azure.create_key(usage="SIGNING", algorithm="ECDSA-P256", owner="az")
    old = await azure.use_key(key.key_id, "SIGN", b"m")
    rotation = await azure.rotate_key(key.key_id, grace_period="P1D")
    name = azure_name(key.key_id)
    assert len(azure_vault.keys[name]) == 2
    new_ref = azure.catalog.get(key.name).current.provider_ref
    assert new_ref["name"] == name and new_ref["version"] == azure_vault.keys[name][1].version
    assert (await azure.use_key(key.name, "SIGN", b"m")).key_id == rotation.new_key_id
    assert await azure.use_key(key.name, "VERIFY", b"m", signature=old.signature)
    # A migration to another algorithm starts a new vault key.
    migration = await azure.rotate_key(key.key_id, algorithm="RSA-2048")
    assert azure.catalog.get(key.name).current.provider_ref["name"] \
        == azure_name(migration.new_key_id)


async def test_deletion_disables_then_soft_deletes_and_stays_recoverable(azure, azure_vault,
                                                                         clock):
    key = await azure.create_key(usage="SIGNING", algorithm="ECDSA-P256", owner="az")
    await azure.rotate_key(key.key_id, grace_period="P1D")
    name = azure_name(key.key_id)
    await azure.schedule_key_deletion(key.name, "P7D")
    assert [(v.enabled, v.tags["qkms-state"]) for v in azure_vault.keys[name]] \
        == [(False, "pending-deletion")] * 2
    first = azure_vault.keys[name][0]
    client = azure.provider.client.get_cryptography_client(name, key_version=first.version)
    with pytest.raises(HttpResponseError) as refused:  # the vault itself refuses it now
        await asyncio.to_thread(client.sign, SignatureAlgorithm.es256, bytes(32))
    assert refused.value.status_code == 403 and refused.value.error.code == "Forbidden"
    await azure.cancel_key_deletion(key.name)
    assert all(v.enabled for v in azure_vault.keys[name])
    await azure.schedule_key_deletion(key.name, "P7D")
    clock.advance(days=7, seconds=1)
    await azure.tick()
    assert (await azure.get_key(key.key_id)).state is VersionState.DESTROYED
    assert name not in azure_vault.keys and name in azure_vault.deleted
    deleted = await asyncio.to_thread(azure.provider.client.get_deleted_key, name)
    assert deleted.recovery_id.endswith(f"/deletedkeys/{name}")
    assert deleted.properties.recovery_level == "Recoverable+Purgeable"
    poller = await asyncio.to_thread(azure.provider.client.begin_recover_deleted_key, name)
    recovered = await asyncio.to_thread(poller.result)
    assert recovered.name == name  # soft delete: the vault can still bring it back


async def test_purge_on_destroy_removes_the_deleted_key(make_azure, azure_vault, clock):
    svc = make_azure(AZURE_PURGE_ON_DESTROY="true")
    key = await svc.create_key(usage="SIGNING", algorithm="ECDSA-P256", owner="az")
    await svc.schedule_key_deletion(key.name, "P7D")
    clock.advance(days=7, seconds=1)
    await svc.tick()
    name = azure_name(key.key_id)
    assert name not in azure_vault.keys and name not in azure_vault.deleted


async def test_a_destroy_retried_after_the_delete_still_purges(make_azure, azure_vault, clock):
    svc = make_azure(AZURE_PURGE_ON_DESTROY="true")
    key = await svc.create_key(usage="SIGNING", algorithm="ECDSA-P256", owner="az")
    await svc.schedule_key_deletion(key.name, "P7D")
    name = azure_name(key.key_id)
    # An earlier attempt deleted the key and failed before it could purge it.
    await asyncio.to_thread(svc.provider.client.begin_delete_key, name)
    clock.advance(days=7, seconds=1)
    await svc.tick()
    assert (await svc.get_key(key.key_id)).state is VersionState.DESTROYED
    assert name not in azure_vault.keys and name not in azure_vault.deleted


async def test_envelope_material_is_sealed_under_a_vault_wrapped_data_key(make_azure,
                                                                          azure_vault):
    svc = make_azure(cache_seconds=0)
    key = await svc.create_key(usage="SIGNING", algorithm="Falcon-1024", owner="az")
    assert key.provider_mode == "envelope"
    record = svc.sealed.get_json("material", key.key_id)
    assert record["wrapper"] == "azure-wrapkey-rsa-oaep-256"
    wrap = azure_vault.keys["qkms-wrap"][-1]
    assert wrap.kty == "RSA" and wrap.key_ops == ["wrapKey", "unwrapKey"]
    assert f"qkms-wrap/{wrap.version}".encode() in base64.b64decode(record["private"])
    before = azure_vault.requests
    signed = await svc.use_key(key.key_id, "SIGN", b"m")  # a 2305-byte key, unwrapped
    assert azure_vault.requests > before
    assert await svc.use_key(key.key_id, "VERIFY", b"m", signature=signed.signature)


async def test_rsa_oaep_without_a_label_decrypts_in_the_vault(azure):
    key = await azure.create_key(usage="ENCRYPTION", algorithm="RSA-2048", owner="az")
    public = load_der_public_key(key.public_key)
    oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
    handle = azure._handle(azure.catalog.get(key.name).current)
    assert await azure.provider.decrypt(handle, public.encrypt(b"plain", oaep), b"") == b"plain"


async def test_rsa_ciphertexts_bound_to_a_context_are_refused_clearly(azure):
    """Key Vault's RSA-OAEP-256 has no label; qkms binds the AAD as one (a known gap)."""
    key = await azure.create_key(usage="ENCRYPTION", algorithm="RSA-2048", owner="az")
    token = await azure.use_key(key.key_id, "ENCRYPT", b"m", context="ctx")
    with pytest.raises(OperationNotAllowedError, match="no OAEP label"):
        await azure.use_key(key.key_id, "DECRYPT", token, context="ctx")


async def test_outage_gives_clear_errors_then_heals_with_nothing_lost(make_azure, azure_vault):
    svc = make_azure(cache_seconds=0)
    ec_key = await svc.create_key(usage="SIGNING", algorithm="ECDSA-P256", owner="az")
    pq_key = await svc.create_key(usage="SIGNING", algorithm="ML-DSA-65", owner="az")
    before = await svc.use_key(ec_key.key_id, "SIGN", b"before")
    records = sorted(svc.sealed.list("material"))
    azure_vault.stop()
    try:
        for call in (lambda: svc.use_key(ec_key.key_id, "SIGN", b"m"),
                     lambda: svc.use_key(pq_key.key_id, "SIGN", b"m"),
                     lambda: svc.create_key(usage="SIGNING", algorithm="RSA-2048", owner="x"),
                     lambda: svc.create_key(usage="SIGNING", algorithm="ML-DSA-44", owner="x")):
            started = time.monotonic()
            with pytest.raises(ProviderUnavailableError) as caught:
                await call()
            assert time.monotonic() - started < 10  # within the configured timeout
            message = str(caught.value)
            assert message.startswith(f"KMS provider unavailable: AZURE_KEY_VAULT at "
                                      f"{azure_vault.url}")
            assert "qkms-test-token" not in message
        health = await svc.health_check()
        assert health["components"]["provider"]["status"] == "unhealthy"
        assert sorted(svc.sealed.list("material")) == records
        assert len(await svc.list_keys()) == 2
    finally:
        azure_vault.start()
    assert await svc.use_key(ec_key.key_id, "VERIFY", b"before", signature=before.signature)
    for key in (ec_key, pq_key):
        signed = await svc.use_key(key.key_id, "SIGN", b"after")
        assert await svc.use_key(key.key_id, "VERIFY", b"after", signature=signed.signature)
    assert (await svc.health_check())["components"]["provider"]["status"] == "healthy"


async def test_a_slow_vault_times_out_as_unavailable(make_azure, azure_vault, monkeypatch):
    svc = make_azure(AZURE_TIMEOUT="0.3")
    key = await svc.create_key(usage="SIGNING", algorithm="ECDSA-P256", owner="az")
    original = azure_vault._operate

    def slow(*args):
        time.sleep(0.8)  # blocks the emulator's loop: no answer in time
        return original(*args)
    monkeypatch.setattr(azure_vault, "_operate", slow)
    with pytest.raises(ProviderUnavailableError, match="no answer within 0.3s"):
        await svc.use_key(key.key_id, "SIGN", b"m")


def test_missing_vault_url_is_named(tmp_path):
    settings = Settings(provider=ProviderType.AZURE_KEY_VAULT, data_dir=tmp_path,
                        provider_options={"AZURE_ACCESS_TOKEN": "t"})
    with pytest.raises(InvalidInputError, match="AZURE_VAULT_URL"):
        KeyManagementService(settings)


# -- the emulator against the documented REST shapes -------------------------------------

def _request(vault: KeyVaultEmulator, method: str, path: str, body: dict | None = None,
             token: str | None = "t") -> tuple[int, dict, dict]:
    context = ssl.create_default_context(cafile=str(vault.ca_file))
    request = urllib.request.Request(
        f"{vault.url}{path}", method=method, data=json.dumps(body).encode() if body else None,
        headers={"Content-Type": "application/json",
                 **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            raw = response.read()
            return response.status, dict(response.headers), json.loads(raw) if raw else {}
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


def test_emulator_challenges_requests_without_a_bearer_token(azure_vault):
    status, headers, body = _request(azure_vault, "GET", "/keys/x?api-version=7.5", token=None)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith(
        'Bearer authorization="https://login.microsoftonline.com/')
    assert 'resource="https://vault.azure.net"' in headers["WWW-Authenticate"]
    assert body["error"]["code"] == "Unauthorized"


def test_emulator_key_bundles_errors_and_signatures_follow_the_rest_reference(azure_vault):
    status, _, body = _request(azure_vault, "POST", "/keys/rest-shape/create?api-version=7.5",
                               {"kty": "EC", "crv": "P-256", "key_ops": ["sign", "verify"],
                                "tags": {"t": "1"}})
    assert status == 200
    key = body["key"]
    assert key["kid"].startswith(f"{azure_vault.url}/keys/rest-shape/")
    assert (key["kty"], key["crv"], key["key_ops"]) == ("EC", "P-256", ["sign", "verify"])
    assert len(unb64u(key["x"])) == 32 and "d" not in key
    assert body["attributes"]["enabled"] is True
    assert body["attributes"]["recoveryLevel"] == "Recoverable+Purgeable"
    assert isinstance(body["attributes"]["created"], int) and body["tags"] == {"t": "1"}
    version = key["kid"].rsplit("/", 1)[1]
    assert len(version) == 32
    status, _, signed = _request(azure_vault, "POST",
                                 f"/keys/rest-shape/{version}/sign?api-version=7.5",
                                 {"alg": "ES256", "value": "A" * 43})
    assert status == 200 and signed["kid"] == key["kid"]
    assert len(unb64u(signed["value"])) == 64  # r || s
    status, _, error = _request(azure_vault, "GET", "/keys/no-such-key?api-version=7.5")
    assert status == 404 and error["error"]["code"] == "KeyNotFound"
    status, _, error = _request(azure_vault, "GET", "/keys/rest-shape?api-version=1.0")
    assert status == 400 and error["error"]["code"] == "BadParameter"
    status, _, deleted = _request(azure_vault, "DELETE", "/keys/rest-shape?api-version=7.5")
    assert deleted["recoveryId"] == f"{azure_vault.url}/deletedkeys/rest-shape"
    assert deleted["scheduledPurgeDate"] > deleted["deletedDate"]
    status, _, error = _request(azure_vault, "POST", "/keys/rest-shape/create?api-version=7.5",
                                {"kty": "EC"})
    assert status == 409 and error["error"]["code"] == "Conflict"
