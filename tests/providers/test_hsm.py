"""HSM (PKCS#11) against SoftHSM2: keys stay in the token, outages are clear and heal."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from qkms.config import Settings
from qkms.crypto.base import InvalidCiphertext
from qkms.errors import (
    DecryptionError,
    InvalidInputError,
    ProviderUnavailableError,
    RecordCorruptError,
)
from qkms.model.enums import Environment, ProviderType, VersionState
from qkms.providers.rsa_oaep import oaep_decode
from qkms.service import KeyManagementService
from tests.support.servers import require_server
from tests.support.softhsm import SoftHsm

try:
    import pkcs11
    from pkcs11 import Attribute, Mechanism, ObjectClass
    from pkcs11 import exceptions as p11
except ImportError:  # fails under QKMS_REQUIRE_SERVERS=1, skips loudly elsewhere
    require_server("SoftHSM2", "python-pkcs11 is missing: pip install 'qkms[hsm]'",
                   module_level=True)

pytestmark = pytest.mark.server
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def make_hsm(softhsm: SoftHsm, tmp_path, clock):
    def make(cache_seconds: float = 60.0, **options: str) -> KeyManagementService:
        settings = Settings(environment=Environment.DEV, provider=ProviderType.HSM,
                            data_dir=tmp_path / "data", key_cache_seconds=cache_seconds,
                            provider_options={**softhsm.options(), **options})
        return KeyManagementService(settings, clock=clock)
    return make


@pytest.fixture
def hsm(make_hsm) -> KeyManagementService:
    return make_hsm()


def objects(svc: KeyManagementService, label: str) -> list:
    return svc.provider.token.call(
        lambda session: list(session.get_objects({Attribute.LABEL: label})))


@pytest.mark.parametrize(("algorithm", "usage", "kind"), [
    ("AES-256-GCM", "ENCRYPTION", ObjectClass.SECRET_KEY),
    ("ECDSA-P256", "SIGNING", ObjectClass.PRIVATE_KEY),
    ("Ed25519", "SIGNING", ObjectClass.PRIVATE_KEY),
    ("RSA-2048", "SIGNING", ObjectClass.PRIVATE_KEY),
])
async def test_native_keys_are_made_inside_the_token_and_refuse_export(hsm, algorithm, usage,
                                                                       kind):
    key = await hsm.create_key(usage=usage, algorithm=algorithm, owner="hsm")
    assert key.provider_mode == "native"

    def inspect(session):
        obj = session.get_key(object_class=kind, label=key.key_id)
        facts = {a: obj[a] for a in (Attribute.TOKEN, Attribute.SENSITIVE, Attribute.EXTRACTABLE,
                                     Attribute.ALWAYS_SENSITIVE, Attribute.NEVER_EXTRACTABLE)}
        secret = Attribute.VALUE if kind is ObjectClass.SECRET_KEY else (
            Attribute.PRIVATE_EXPONENT if algorithm.startswith("RSA") else Attribute.VALUE)
        with pytest.raises(p11.AttributeSensitive):
            obj[secret]  # the value itself
        with pytest.raises((p11.AttributeReadOnly, p11.ArgumentsBad)):
            obj[Attribute.EXTRACTABLE] = True  # may only ever go from true to false
        wrapping = session.get_key(object_class=ObjectClass.SECRET_KEY, label="qkms-export-probe") \
            if list(session.get_objects({Attribute.LABEL: "qkms-export-probe"})) else \
            session.generate_key(pkcs11.KeyType.AES, 256, label="qkms-export-probe", store=False)
        with pytest.raises((p11.KeyUnextractable, p11.KeyNotWrappable)):
            wrapping.wrap_key(obj, mechanism=Mechanism.AES_KEY_WRAP_PAD)
        return facts

    facts = hsm.provider.token.call(inspect)
    assert facts == {Attribute.TOKEN: True, Attribute.SENSITIVE: True,
                     Attribute.EXTRACTABLE: False, Attribute.ALWAYS_SENSITIVE: True,
                     Attribute.NEVER_EXTRACTABLE: True}


async def test_public_keys_are_read_from_the_token(hsm):
    ec_key = await hsm.create_key(usage="SIGNING", algorithm="ECDSA-P256", owner="hsm")
    point = hsm.provider.token.call(lambda s: s.get_key(
        object_class=ObjectClass.PUBLIC_KEY, label=ec_key.key_id)[Attribute.EC_POINT])
    assert ec_key.public_key[0] == 4 and len(ec_key.public_key) == 65
    assert ec_key.public_key in point  # the DER OCTET STRING around the SEC 1 point
    signature = (await hsm.use_key(ec_key.key_id, "SIGN", b"m")).signature
    assert signature[0] == 0x30  # DER, converted from the token's r||s


async def test_envelope_keys_are_wrapped_by_a_token_aes_key(hsm):
    key = await hsm.create_key(usage="SIGNING", algorithm="ML-DSA-65", owner="hsm")
    assert key.provider_mode == "envelope"
    record = hsm.sealed.get_json("material", key.key_id)
    assert record["wrapper"] == "hsm-aes-gcm:qkms-wrap"
    wrap = objects(hsm, "qkms-wrap")
    assert len(wrap) == 1 and wrap[0][Attribute.EXTRACTABLE] is False
    # The key ID is the AAD: the same record under another key ID does not unwrap.
    other = await hsm.create_key(usage="SIGNING", algorithm="ML-DSA-65", owner="hsm")
    hsm.sealed.put_json("material", other.key_id, record)
    hsm.provider.forget(other.key_id)
    with pytest.raises(RecordCorruptError, match="HSM wrapping key"):
        await hsm.use_key(other.key_id, "SIGN", b"m")


async def test_two_wrapping_keys_from_a_creation_race_both_unwrap(make_hsm):
    svc = make_hsm(cache_seconds=0, HSM_WRAP_KEY_LABEL="qkms-wrap-race")
    first = await svc.create_key(usage="SIGNING", algorithm="ML-DSA-44", owner="hsm")
    # Another process created its own wrapping key under the same label meanwhile.
    svc.provider.token.call(lambda s: s.generate_key(
        pkcs11.KeyType.AES, 256, label="qkms-wrap-race", store=True,
        template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False}))
    svc.provider.token.objects.clear()
    second = await svc.create_key(usage="SIGNING", algorithm="ML-DSA-44", owner="hsm")
    assert len(objects(svc, "qkms-wrap-race")) == 2
    for key in (first, second):
        assert (await svc.use_key(key.key_id, "SIGN", b"m")).signature


async def test_rsa_encryption_decrypts_inside_the_token(hsm):
    key = await hsm.create_key(usage="ENCRYPTION", algorithm="RSA-2048", owner="hsm")
    token = await hsm.use_key(key.key_id, "ENCRYPT", b"for the token", context="ctx")
    assert (await hsm.use_key(key.key_id, "DECRYPT", token, context="ctx")).plaintext \
        == b"for the token"
    with pytest.raises(DecryptionError):
        await hsm.use_key(key.key_id, "DECRYPT", token, context="other")
    with pytest.raises(DecryptionError):
        await hsm.use_key(key.key_id, "DECRYPT", token.ciphertext[:-4] + "AAAA", context="ctx")
    # Still healthy afterwards: a bad ciphertext is not an outage.
    assert (await hsm.health_check())["components"]["provider"]["status"] == "healthy"


def test_oaep_decoding_matches_an_independent_implementation():
    """RFC 8017 decoding checked against OpenSSL's OAEP (via cryptography) with labels."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    numbers = private.private_numbers()
    n, d = numbers.public_numbers.n, numbers.d
    for label, message in ((b"", b""), (b"label", b"x" * 190), (os.urandom(70), b"qkms")):
        oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), label or None)
        ciphertext = private.public_key().encrypt(message, oaep)
        raw = pow(int.from_bytes(ciphertext, "big"), d, n).to_bytes(256, "big")
        assert oaep_decode(raw, label, 256) == message
        assert oaep_decode(raw.lstrip(b"\x00"), label, 256) == message
        with pytest.raises(InvalidCiphertext):
            oaep_decode(raw, label + b"!", 256)
    with pytest.raises(InvalidCiphertext):
        oaep_decode(os.urandom(256), b"", 256)


async def test_new_versions_are_new_token_keys_and_destroy_deletes_them(hsm, clock):
    key = await hsm.create_key(usage="ENCRYPTION", algorithm="AES-256-GCM", owner="hsm")
    rotation = await hsm.rotate_key(key.key_id, grace_period="P1D")
    assert len(objects(hsm, key.key_id)) == 1 and len(objects(hsm, rotation.new_key_id)) == 1
    await hsm.schedule_key_deletion(key.name, "P7D")
    assert len(objects(hsm, key.key_id)) == 1  # nothing happens on the token until the end
    clock.advance(days=7, seconds=1)
    await hsm.tick()
    assert (await hsm.get_key(rotation.new_key_id)).state is VersionState.DESTROYED
    assert objects(hsm, key.key_id) == [] and objects(hsm, rotation.new_key_id) == []


async def test_outage_gives_clear_errors_then_heals_with_nothing_lost(make_hsm, softhsm):
    svc = make_hsm(cache_seconds=0)  # no cached material: every use reaches the token
    ec_key = await svc.create_key(usage="SIGNING", algorithm="ECDSA-P256", owner="hsm")
    pq_key = await svc.create_key(usage="SIGNING", algorithm="ML-DSA-65", owner="hsm")
    before = await svc.use_key(ec_key.key_id, "SIGN", b"before")
    records = sorted(svc.sealed.list("material"))
    with softhsm.outage():
        for call in (lambda: svc.use_key(ec_key.key_id, "SIGN", b"m"),
                     lambda: svc.use_key(pq_key.key_id, "SIGN", b"m"),
                     lambda: svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="x"),
                     lambda: svc.create_key(usage="SIGNING", algorithm="Falcon-512", owner="x")):
            with pytest.raises(ProviderUnavailableError) as caught:
                await call()
            message = str(caught.value)
            assert message.startswith("KMS provider unavailable: HSM at ")
            assert softhsm.library in message and softhsm.pin not in message
        health = await svc.health_check()
        assert health["components"]["provider"]["status"] == "unhealthy"
        assert softhsm.pin not in str(health)
        # Nothing half-made: no new records, no new catalog entries.
        assert sorted(svc.sealed.list("material")) == records
        assert len(await svc.list_keys()) == 2
    assert await svc.use_key(ec_key.key_id, "VERIFY", b"before", signature=before.signature)
    for key in (ec_key, pq_key):
        signed = await svc.use_key(key.key_id, "SIGN", b"after")
        assert await svc.use_key(key.key_id, "VERIFY", b"after", signature=signed.signature)
    assert (await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="x")).key_id
    assert (await svc.health_check())["components"]["provider"]["status"] == "healthy"


async def test_a_library_finalized_behind_our_back_is_reopened_transparently(hsm, softhsm):
    key = await hsm.create_key(usage="SIGNING", algorithm="Ed25519", owner="hsm")
    pkcs11.lib(softhsm.library).finalize()  # e.g. a client library restarted
    assert (await hsm.use_key(key.key_id, "SIGN", b"m")).signature


async def test_slot_id_and_token_label_name_the_same_token(make_hsm, hsm):
    slot = (await hsm.provider.health()).detail["slot"]
    by_id = make_hsm(HSM_SLOT=str(slot))
    key = await by_id.create_key(usage="SIGNING", algorithm="ECDSA-P256", owner="hsm")
    signature = (await by_id.use_key(key.key_id, "SIGN", b"m")).signature
    assert hashlib.sha256(signature).digest()  # signed via the slot-ID configuration
    assert len(objects(hsm, key.key_id)) == 2  # visible through the label configuration


async def test_key_policy_settings_configure_it_too(softhsm, tmp_path):
    """KeyPolicy ``settings`` (camelCase) beside the PIN from a Secret; ``slot`` may be a label."""
    options = {"library": softhsm.library, "slot": softhsm.label, "wrapKeyLabel": "qkms-wrap",
               "timeoutSeconds": "5", "HSM_PIN": softhsm.pin}
    svc = KeyManagementService(Settings(provider=ProviderType.HSM, data_dir=tmp_path,
                                        provider_options=options))
    key = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="policy")
    assert (await svc.use_key(key.key_id, "SIGN", b"m")).signature
    assert svc.provider.timeout == 5


def test_a_wrong_pin_is_a_clear_error_that_does_not_show_it(softhsm):
    """In a fresh process: login state is per process, so this one must not be logged in."""
    script = textwrap.dedent(f"""
        import asyncio
        from qkms.config import Settings
        from qkms.model.algorithms import resolve_algorithm
        from qkms.providers.hsm import build
        from qkms.store.records import FileRecordStore
        from qkms.store.sealed import SealedStore
        from qkms.store.kek import Sealer
        settings = Settings(provider_options={{"HSM_LIBRARY": {softhsm.library!r},
            "HSM_SLOT": {softhsm.label!r}, "HSM_PIN": "wrong-pin-0000"}})
        sealed = SealedStore(FileRecordStore({str(softhsm.conf.parent / "pin-test")!r}),
                             Sealer(bytes(32)))
        provider = build(settings, sealed)
        try:
            asyncio.run(provider.create("key_dev_00aa", resolve_algorithm("Ed25519")))
        except Exception as exc:
            print(type(exc).__name__, exc)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "operator"),
           "SOFTHSM2_CONF": str(softhsm.conf)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.startswith("ProviderUnavailableError KMS provider unavailable: HSM at "), \
        out.stdout + out.stderr
    assert "login failed" in out.stdout and "wrong-pin-0000" not in out.stdout + out.stderr


async def test_an_unloadable_library_is_unavailable_not_a_crash(make_hsm, tmp_path):
    svc = make_hsm(HSM_LIBRARY=str(tmp_path / "missing-pkcs11.so"))
    with pytest.raises(ProviderUnavailableError, match="cannot load the PKCS#11 library"):
        await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="hsm")


@pytest.mark.parametrize("missing", ["HSM_LIBRARY", "HSM_SLOT", "HSM_PIN"])
def test_missing_settings_are_named(softhsm, tmp_path, missing):
    options = {k: v for k, v in softhsm.options().items() if k != missing}
    settings = Settings(provider=ProviderType.HSM, data_dir=tmp_path, provider_options=options)
    with pytest.raises(InvalidInputError, match=missing):
        KeyManagementService(settings)
