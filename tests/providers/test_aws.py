"""AWS_KMS against moto in server mode: KMS keys, aliases, probing, sealing, deletion, outages.

The shared suite (``test_shared_suite.py``) covers every algorithm.  Where moto differs
from AWS KMS, the difference is asserted next to the test it affects (``GAP``), so a moto
release that closes it makes the assertion fail and the note go.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.serialization import load_der_public_key

from qkms.config import Settings
from qkms.crypto import suite_for
from qkms.errors import (
    DecryptionError,
    InvalidInputError,
    OperationNotAllowedError,
    ProviderUnavailableError,
    RotationFailedError,
)
from qkms.model.algorithms import resolve_algorithm
from qkms.model.enums import Environment, ProviderType, VersionState
from qkms.providers import (
    aws,  # noqa: E402
    capabilities,
)
from qkms.providers.base import Capability
from qkms.service import AUDIT_KEY, KeyManagementService, parse_token
from tests.support.moto import MotoServer

pytestmark = pytest.mark.server


@pytest.fixture
def make_aws(tmp_path, clock):
    def make(options: dict[str, str], **overrides) -> KeyManagementService:
        settings = Settings(environment=Environment.DEV, provider=ProviderType.AWS_KMS,
                            data_dir=tmp_path / "data", provider_options=dict(options),
                            **overrides)
        return KeyManagementService(settings, clock=clock)
    return make


@pytest.fixture
def svc(make_aws, aws_options) -> KeyManagementService:
    return make_aws(aws_options)


@pytest.fixture
def kms(moto_server: MotoServer):
    return moto_server.client()


def kms_key(svc: KeyManagementService, key_id: str) -> str:
    """The KMS key ID behind one qkms version."""
    return next(v.provider_ref["kms_key"] for v in svc.get_record(key_id).versions
                if v.key_id == key_id)


async def test_each_version_is_a_kms_key_behind_one_alias(svc, kms, clock):
    key = await svc.create_key(usage="SIGNING", algorithm="ECDSA-P256", owner="t")
    first = kms_key(svc, key.key_id)
    meta = kms.describe_key(KeyId=first)["KeyMetadata"]
    assert (meta["KeySpec"], meta["KeyUsage"]) == ("ECC_NIST_P256", "SIGN_VERIFY")
    alias = f"alias/qkms/{key.key_id}"
    assert kms.describe_key(KeyId=alias)["KeyMetadata"]["KeyId"] == first
    # The recorded public key is KMS's, in SEC1 uncompressed form.
    der = kms.get_public_key(KeyId=first)["PublicKey"]
    assert aws.public_raw(resolve_algorithm("ECDSA-P256"), der) == key.public_key

    rotation = await svc.rotate_key(key.name, grace_period="P1D")
    second = kms_key(svc, rotation.new_key_id)
    assert second != first
    assert kms.describe_key(KeyId=alias)["KeyMetadata"]["KeyId"] == second  # the alias moved
    assert kms.describe_key(KeyId=first)["KeyMetadata"]["KeyState"] == "Enabled"  # in grace
    clock.advance(days=1, seconds=1)
    await svc.tick()  # the grace ends: the old KMS key is disabled and tagged
    assert kms.describe_key(KeyId=first)["KeyMetadata"]["KeyState"] == "Disabled"
    tags = kms.list_resource_tags(KeyId=first)["Tags"]
    assert {"TagKey": "qkms:retired", "TagValue": "true"} in tags
    # GAP: moto still signs with a disabled key (AWS answers DisabledException); qkms
    # refuses the retired version by its own state first.
    kms.sign(KeyId=first, Message=b"m", MessageType="RAW", SigningAlgorithm="ECDSA_SHA_256")


async def test_ecdsa_signatures_are_der_over_sha256(svc):
    for name, curve in (("ECDSA-P256", ec.SECP256R1()), ("ECDSA-secp256k1", ec.SECP256K1())):
        key = await svc.create_key(usage="SIGNING", algorithm=name, owner="t")
        assert key.provider_mode == "native"
        signature = (await svc.use_key(key.key_id, "SIGN", b"message")).signature
        public = ec.EllipticCurvePublicKey.from_encoded_point(curve, key.public_key)
        public.verify(signature, b"message", ec.ECDSA(hashes.SHA256()))


async def test_rsa_pss_signatures_verify_and_moto_uses_the_maximum_salt(svc):
    key = await svc.create_key(usage="SIGNING", algorithm="RSA-2048", owner="t")
    signature = (await svc.use_key(key.key_id, "SIGN", b"message")).signature
    public = load_der_public_key(key.public_key)
    assert await svc.use_key(key.key_id, "VERIFY", b"message", signature=signature)
    public.verify(signature, b"message", padding.PSS(padding.MGF1(hashes.SHA256()),
                                                      padding.PSS.MAX_LENGTH), hashes.SHA256())
    # GAP: moto's RSASSA_PSS_SHA_256 uses the maximum salt length, AWS KMS a 32-byte salt;
    # qkms verifies any salt length, so both are accepted.
    with pytest.raises(InvalidSignature):
        public.verify(signature, b"message", padding.PSS(padding.MGF1(hashes.SHA256()), 32),
                      hashes.SHA256())


async def test_long_messages_are_signed_as_a_digest(svc):
    """Over 4096 bytes KMS takes no RAW message: ECDSA and RSA sign a SHA-256 DIGEST."""
    key = await svc.create_key(usage="SIGNING", algorithm="ECDSA-P256", owner="t")
    message = os.urandom(5000)
    signature = (await svc.use_key(key.key_id, "SIGN", message)).signature
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key.public_key)
    # GAP: moto hashes a DIGEST message again, so its signature covers SHA-256(digest);
    # AWS KMS signs the digest as given, which verifies over the message itself.
    public.verify(signature, hashlib.sha256(message).digest(), ec.ECDSA(hashes.SHA256()))
    assert not await svc.use_key(key.key_id, "VERIFY", message, signature=signature)


async def test_ml_dsa_and_ed25519_are_probed_and_moto_refuses_them(svc, kms):
    for name, spec in (("ML-DSA-65", "ML_DSA_65"), ("Ed25519", "ECC_NIST_EDWARDS25519")):
        key = await svc.create_key(usage="SIGNING", algorithm=name, owner="t")
        # GAP: moto refuses the ML-DSA and Ed25519 key specs that AWS KMS offers...
        with pytest.raises(kms.exceptions.ClientError, match="ValidationException"):
            kms.create_key(KeySpec=spec, KeyUsage="SIGN_VERIFY")
        # ...so the probe made them envelope keys, and the table now says so.
        assert key.provider_mode == "envelope"
        info = resolve_algorithm(name)
        assert capabilities.capability(ProviderType.AWS_KMS, info) is Capability.ENVELOPE
        assert capabilities.PROBED[(ProviderType.AWS_KMS, name)] is Capability.ENVELOPE
        signature = (await svc.use_key(key.key_id, "SIGN", b"m")).signature
        assert suite_for(name).load_public(key.public_key).verify(b"m", signature)


def test_external_mu_is_fips_204_mu():
    """Native ML-DSA signs long messages as EXTERNAL_MU; moto cannot, so check the mu
    against dilithium-py and the signature made from it against cryptography."""
    import dilithium_py.ml_dsa as dilithium
    from cryptography.hazmat.primitives.asymmetric.mldsa import MLDSA65PublicKey
    public, secret = dilithium.ML_DSA_65.keygen()
    message = os.urandom(6000)
    mu = aws.ml_dsa_mu(hashlib.shake_256(public).digest(64), message)
    assert mu == dilithium.ML_DSA_65.prehash_external_mu(public, message)
    signature = dilithium.ML_DSA_65.sign_external_mu(secret, mu)
    MLDSA65PublicKey.from_public_bytes(public).verify(signature, message)


async def test_aes_ciphertexts_are_kms_blobs_bound_to_version_and_context(svc, kms):
    key = await svc.create_key(usage="ENCRYPTION", algorithm="AES-256-GCM", owner="t")
    token = (await svc.use_key(key.key_id, "ENCRYPT", b"secret", context="ctx")).ciphertext
    _, body = parse_token(token)
    assert not body.startswith(aws.DATA_KEY_MAGIC)
    aad = b"qkms:v1:" + key.key_id.encode() + b"\x00ctx"
    direct = kms.decrypt(CiphertextBlob=body, KeyId=kms_key(svc, key.key_id),
                         EncryptionContext={"qkms:aad": base64.b64encode(aad).decode()})
    assert direct["Plaintext"] == b"secret"  # AWS's own blob, its context carrying the aad
    with pytest.raises(DecryptionError):
        await svc.use_key(key.key_id, "DECRYPT", token, context="other")
    # Over 4096 bytes KMS Encrypt refuses: a data key seals it instead.
    big = os.urandom(10_000)
    token = (await svc.use_key(key.key_id, "ENCRYPT", big, context="ctx")).ciphertext
    assert parse_token(token)[1].startswith(aws.DATA_KEY_MAGIC)
    assert (await svc.use_key(key.key_id, "DECRYPT", token, context="ctx")).plaintext == big
    with pytest.raises(DecryptionError):
        await svc.use_key(key.key_id, "DECRYPT", token, context="other")
    tampered = token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB")
    with pytest.raises(DecryptionError):
        await svc.use_key(key.key_id, "DECRYPT", tampered, context="ctx")


async def test_envelope_keys_are_wrapped_under_the_wrapping_key_with_their_key_id(
        make_aws, aws_options, kms):
    svc = make_aws({**aws_options, "AWS_KMS_KEY_ID": "alias/qkms/test-wrap"})
    small = await svc.create_key(usage="ENCRYPTION", algorithm="ML-KEM-768", owner="t")
    large = await svc.create_key(usage="SIGNING", algorithm="Falcon-1024", owner="t")
    wrapping = kms.describe_key(KeyId="alias/qkms/test-wrap")["KeyMetadata"]  # created
    assert wrapping["KeyUsage"] == "ENCRYPT_DECRYPT"
    small_blob = base64.b64decode(svc.sealed.get_json("material", small.key_id)["private"])
    large_blob = base64.b64decode(svc.sealed.get_json("material", large.key_id)["private"])
    assert not small_blob.startswith(aws.DATA_KEY_MAGIC)  # 64 bytes: KMS Encrypt
    assert large_blob.startswith(aws.DATA_KEY_MAGIC)  # 4098 bytes: a data key
    # The EncryptionContext binds each record to its key ID.
    context = {"qkms:key_id": small.key_id}
    assert kms.decrypt(CiphertextBlob=small_blob, EncryptionContext=context)["Plaintext"]
    with pytest.raises(kms.exceptions.InvalidCiphertextException):
        kms.decrypt(CiphertextBlob=small_blob, EncryptionContext={"qkms:key_id": large.key_id})
    # A fresh service (no cache) unwraps through KMS.
    fresh = make_aws({**aws_options, "AWS_KMS_KEY_ID": "alias/qkms/test-wrap"},
                     key_cache_seconds=0)
    signature = (await fresh.use_key(large.key_id, "SIGN", b"m")).signature
    assert await fresh.use_key(large.key_id, "VERIFY", b"m", signature=signature)


async def test_deletion_is_scheduled_in_kms_with_the_window(svc, kms, clock):
    key = await svc.create_key(usage="ENCRYPTION", algorithm="AES-256-GCM", owner="t")
    rotation = await svc.rotate_key(key.name, immediate=True)  # v1 retired: disabled
    first, second = kms_key(svc, key.key_id), kms_key(svc, rotation.new_key_id)
    await svc.schedule_key_deletion(key.name, "P10D")
    for arn in (first, second):
        meta = kms.describe_key(KeyId=arn)["KeyMetadata"]
        assert meta["KeyState"] == "PendingDeletion"
        days = (meta["DeletionDate"] - meta["CreationDate"]).days
        assert 9 <= days <= 10
    await svc.cancel_key_deletion(key.name)
    # A cancelled KMS key comes back disabled: the active one is re-enabled, the retired not.
    assert kms.describe_key(KeyId=second)["KeyMetadata"]["KeyState"] == "Enabled"
    assert kms.describe_key(KeyId=first)["KeyMetadata"]["KeyState"] == "Disabled"
    token = await svc.use_key(key.name, "ENCRYPT", b"m")
    assert (await svc.use_key(key.name, "DECRYPT", token)).plaintext == b"m"
    await svc.schedule_key_deletion(key.name, "P7D")
    clock.advance(days=7, seconds=1)
    await svc.tick()
    assert (await svc.get_key(key.key_id)).state is VersionState.DESTROYED
    assert kms.describe_key(KeyId=second)["KeyMetadata"]["KeyState"] == "PendingDeletion"


async def test_native_rsa_keys_sign_only_a_known_gap(svc):
    """KMS RSA keys sign or decrypt, not both, and KMS OAEP takes no label."""
    key = await svc.create_key(usage="ENCRYPTION", algorithm="RSA-2048", owner="t")
    token = await svc.use_key(key.key_id, "ENCRYPT", b"m")  # public-key encryption: software
    with pytest.raises(OperationNotAllowedError, match="no label"):
        await svc.use_key(key.key_id, "DECRYPT", token)


async def test_ed25519_native_refuses_messages_over_the_raw_limit(tmp_path):
    """Where KMS holds Ed25519 natively, its plain Ed25519 takes at most 4096 bytes."""
    from qkms.providers.base import KeyHandle
    from qkms.store.kek import Sealer
    from qkms.store.records import MemoryRecordStore
    from qkms.store.sealed import SealedStore
    provider = aws.AwsKmsProvider(aws.AwsOptions(region="us-east-1"),
                                  SealedStore(MemoryRecordStore(), Sealer(bytes(32))))
    handle = KeyHandle("key_dev_0123456789abcdef", resolve_algorithm("Ed25519"),
                       {"kms_key": "1234abcd-12ab-34cd-56ef-1234567890ab"})
    with pytest.raises(OperationNotAllowedError, match="4096"):
        await provider.sign(handle, bytes(4097))


def test_options_accept_keypolicy_names_and_never_show_credentials():
    options = aws.AwsOptions.from_options({
        "region": "eu-west-1", "keyId": "alias/payments-wrap",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "very-secret"})
    assert (options.region, options.wrap_key, options.address) == (
        "eu-west-1", "alias/payments-wrap", "https://kms.eu-west-1.amazonaws.com")
    assert "very-secret" not in repr(options) and "AKIAEXAMPLE" not in repr(options)
    merged = aws.AwsOptions.from_options({"AWS_REGION": "us-east-1", "region": "eu-west-1"})
    assert merged.region == "eu-west-1"  # the policy's setting wins over the environment
    with pytest.raises(InvalidInputError, match="AWS_REGION"):
        aws.AwsOptions.from_options({})


async def test_a_missing_wrapping_key_is_unavailable_and_credentials_never_show(
        make_aws, aws_options):
    svc = make_aws({**aws_options, "AWS_KMS_KEY_ID": "1234abcd-0000-0000-0000-000000000000"})
    with pytest.raises(ProviderUnavailableError, match="wrapping key .* not found") as caught:
        await svc.create_key(usage="SIGNING", algorithm="Falcon-512", owner="t")
    assert aws_options["AWS_SECRET_ACCESS_KEY"] not in str(caught.value)
    # GAP: moto checks no credentials at all, so refusals are exercised without it.
    wrong = make_aws({**aws_options, "AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    await wrong.create_key(usage="SIGNING", algorithm="ECDSA-P256", owner="t")


@pytest.mark.parametrize("code,status,expected", [
    ("AccessDeniedException", 400, "access denied (AccessDeniedException): check the"),
    ("UnrecognizedClientException", 400, "access denied"),
    ("ThrottlingException", 400, "ThrottlingException"),
    ("KMSInternalException", 500, "KMSInternalException"),
    ("SomethingNew", 503, "SomethingNew"),
])
def test_refusals_and_server_errors_are_unavailable(aws_options, code, status, expected):
    from qkms.store.kek import Sealer
    from qkms.store.records import MemoryRecordStore
    from qkms.store.sealed import SealedStore
    provider = aws.AwsKmsProvider(aws.AwsOptions.from_options(aws_options),
                                  SealedStore(MemoryRecordStore(), Sealer(bytes(32))))
    error = provider._translate(code, "", status, "key_dev_0123456789abcdef", False, False)
    assert isinstance(error, ProviderUnavailableError)
    assert f"AWS_KMS at {aws_options['AWS_ENDPOINT_URL']}: " in str(error)
    assert expected in str(error)


async def test_health_reports_the_endpoint(svc, moto_server):
    provider = (await svc.health_check())["components"]["provider"]
    assert provider["status"] == "healthy" and provider["endpoint"] == moto_server.endpoint


async def test_an_outage_is_reported_within_the_timeout_and_nothing_is_lost(tmp_path,
                                                                            make_aws):
    server = MotoServer(tmp_path / "moto-outage")  # its own server: this one gets stopped
    server.start()
    try:
        await _outage(server, make_aws)
    finally:
        server.stop()


async def _outage(server: MotoServer, make_aws) -> None:
    svc = make_aws(server.options(AWS_KMS_TIMEOUT="0.5"), key_cache_seconds=0)
    ec_key = await svc.create_key(usage="SIGNING", algorithm="ECDSA-P256", owner="t")
    aes = await svc.create_key(usage="ENCRYPTION", algorithm="AES-256-GCM", owner="t")
    kem = await svc.create_key(usage="ENCRYPTION", algorithm="ML-KEM-768", owner="t")
    token = await svc.use_key(aes.key_id, "ENCRYPT", b"kept")
    encap = await svc.use_key(kem.key_id, "ENCAPSULATE")
    signature = (await svc.use_key(ec_key.key_id, "SIGN", b"m")).signature
    keys_before = len(svc.user_records())
    prefix = f"KMS provider unavailable: AWS_KMS at {server.endpoint}: "
    calls = {
        "sign": lambda: svc.use_key(ec_key.name, "SIGN", b"m"),
        "encrypt": lambda: svc.use_key(aes.key_id, "ENCRYPT", b"m"),
        "decrypt": lambda: svc.use_key(aes.key_id, "DECRYPT", token),
        "decapsulate": lambda: svc.use_key(kem.key_id, "DECAPSULATE", encap.ciphertext),
        "create native": lambda: svc.create_key(usage="SIGNING", algorithm="ECDSA-P256",
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
            assert "testing" not in str(caught.value)  # the (dummy) credentials
        with pytest.raises(RotationFailedError, match="KMS provider unavailable") as rotation:
            await svc.rotate_key(ec_key.name)
        assert rotation.value.retryable
        health = await svc.health_check()
        assert health["components"]["provider"]["status"] == "unhealthy"
        assert await svc.use_key(ec_key.key_id, "VERIFY", b"m", signature=signature)

    server.pause()  # accepts connections, never answers
    try:
        await all_fail("no answer within 0.5s")
    finally:
        server.resume()
    # Resumed: nothing was lost, nothing half-made was kept.
    assert len(svc.user_records()) == keys_before
    audit_key = svc.catalog.get(AUDIT_KEY).current.key_id  # qkms's own, made on first use
    assert [k for k in svc.sealed.list("material") if k != audit_key] == [kem.key_id]
    assert (await svc.use_key(aes.key_id, "DECRYPT", token)).plaintext == b"kept"
    decap = await svc.use_key(kem.key_id, "DECAPSULATE", encap.ciphertext)
    assert decap.shared_secret == encap.shared_secret
    rotated = await svc.rotate_key(ec_key.name, grace_period="P1D")
    assert (await svc.use_key(ec_key.name, "SIGN", b"after")).key_id == rotated.new_key_id

    server.stop()  # nothing listens: refused at once
    await all_fail("connection refused")
    # GAP: moto keeps its state in memory only, so a restarted moto has no keys; the
    # restart that must lose nothing is the pause above (and OpenBao's raft restart).
    server.start()
    health = await svc.health_check()
    assert health["components"]["provider"]["status"] == "healthy"
    assert json.dumps(health).count("testing") == 0
