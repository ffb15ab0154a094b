"""Signature options over HTTP: signature_format, prehashed, recovery_id, low_s, in single
requests, batch items, the Python client and the OpenAPI document."""

from __future__ import annotations

import base64

import aiohttp
import coincurve
import pytest
from eth_hash.auto import keccak
from eth_keys import keys as eth_keys

from qkms.client import QkmsClient
from qkms.crypto import ecdsa, ethereum
from qkms.errors import InvalidInputError
from tests.server.common import TOKENS

ETH = "/v1/keys/payments/eth"
P256 = "/v1/keys/payments/ecdsa"
ED25519 = "/v1/keys/payments/user-service-signing"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def post(plane, path: str, body):
    headers = {"Authorization": f"Bearer {TOKENS['checkout']}"}
    async with aiohttp.ClientSession() as session:
        async with session.post(plane.url + path, json=body, headers=headers) as rsp:
            return rsp.status, await rsp.json(content_type=None)


@pytest.fixture
async def eth_key(plane):
    return await plane.service().create_key(name="payments/eth", usage="SIGNING",
                                            algorithm="ECDSA-secp256k1", owner="payments")


async def test_ethereum_digest_with_recovery_id(plane, eth_key):
    digest = keccak(b"an rlp-encoded transaction")
    status, body = await post(plane, f"{ETH}:sign", {"input": b64(digest), "prehashed": True,
                                                     "recovery_id": True})
    assert status == 200, body
    signature = base64.b64decode(body["signature"])
    assert len(signature) == 64 and body["recovery_id"] in (0, 1)
    vrs = eth_keys.Signature(signature + bytes([body["recovery_id"]]))
    assert vrs.recover_public_key_from_msg_hash(digest).to_checksum_address() == \
        ethereum.address(eth_key.public_key)
    status, body = await post(plane, f"{ETH}:verify", {
        "input": b64(digest), "signature": b64(signature), "prehashed": True})
    assert status == 200 and body == {"valid": True}


async def test_raw_and_der_forms_and_low_s(plane, eth_key):
    strict = coincurve.PublicKey(eth_key.public_key)
    for i in range(8):
        status, body = await post(plane, f"{ETH}:sign", {"input": b64(b"m%d" % i)})
        assert status == 200 and strict.verify(base64.b64decode(body["signature"]), b"m%d" % i)
        assert "recovery_id" not in body
    status, body = await post(plane, f"{P256}:sign", {"input": b64(b"m"), "low_s": True,
                                                      "signature_format": "raw"})
    raw = base64.b64decode(body["signature"])
    assert status == 200 and len(raw) == 64
    assert int.from_bytes(raw[32:], "big") <= ecdsa.P256.half_n
    for fmt in (None, "raw"):
        request = {"input": b64(b"m"), "signature": body["signature"]}
        if fmt:
            request["signature_format"] = fmt
        assert await post(plane, f"{P256}:verify", request) == (200, {"valid": True})


async def test_batch_items_carry_options_and_recovery_ids(plane, eth_key):
    digests = [keccak(b"tx %d" % i) for i in range(5)]
    items = [{"input": b64(d), "prehashed": True, "recovery_id": True} for d in digests]
    status, body = await post(plane, f"{ETH}:sign", {"batch_input": items})
    assert status == 200
    address = ethereum.address(eth_key.public_key)
    for digest, result in zip(digests, body["batch_results"], strict=True):
        vrs = eth_keys.Signature(base64.b64decode(result["signature"])
                                 + bytes([result["recovery_id"]]))
        assert vrs.recover_public_key_from_msg_hash(digest).to_checksum_address() == address


async def test_options_the_key_cannot_honour_refuse_the_whole_batch(plane):
    items = [{"input": b64(b"a")}, {"input": b64(b"b")}, {"input": b64(b"c"), "recovery_id": True}]
    status, body = await post(plane, f"{P256}:sign", {"batch_input": items})
    assert status == 400 and body["error"]["field"] == "batch_input[2].recovery_id"
    assert "only ECDSA-secp256k1" in body["error"]["message"]
    denial = plane.seen[-1]
    assert (denial.operation, denial.result) == ("SIGN", "denied")


@pytest.mark.parametrize("path,body,field,reason", [
    (f"{ED25519}:sign", {"input": b64(b"m"), "signature_format": "raw"}, "signature_format",
     "one form"),
    (f"{ED25519}:sign", {"input": b64(bytes(32)), "prehashed": True}, "prehashed",
     "signs the message itself"),
    (f"{P256}:sign", {"input": b64(b"m"), "recovery_id": True}, "recovery_id",
     "only ECDSA-secp256k1"),
    (f"{P256}:sign", {"input": b64(b"m"), "signature_format": "p1363"}, "signature_format",
     "not one of der, raw"),
    (f"{P256}:sign", {"input": b64(b"m"), "prehashed": "true"}, "prehashed", "true or false"),
    (f"{P256}:sign", {"input": b64(bytes(31)), "prehashed": True}, "input",
     "32-byte digest, got 31"),
    (f"{P256}:verify", {"input": b64(b"m"), "signature": b64(b"s"), "recovery_id": True},
     "recovery_id", "unknown field"),
    (f"{P256}:sign", {"batch_input": [{"input": b64(b"m")}, {"input": b64(b"m"),
                                                             "low_s": "yes"}]},
     "batch_input[1].low_s", "true or false"),
    ("/v1/keys/payments/storage-encryption:encrypt", {"input": b64(b"m"),
                                                      "signature_format": "raw"},
     "signature_format", "unknown field"),
])
async def test_bad_options_name_the_field(plane, path, body, field, reason):
    status, answer = await post(plane, path, body)
    assert status == 400, answer
    assert answer["error"]["field"] == field and reason in answer["error"]["message"]


async def test_python_client_passes_options(plane, eth_key):
    digest = keccak(b"client")
    async with QkmsClient(plane.url, token=TOKENS["checkout"]) as kms:
        signed = await kms.use_key("payments/eth", "SIGN", digest, prehashed=True,
                                   recovery_id=True)
        assert signed.recovery_id in (0, 1) and len(signed.signature) == 64
        assert await kms.use_key("payments/eth", "VERIFY", digest, signature=signed.signature,
                                 prehashed=True, signature_format="raw")
        with pytest.raises(InvalidInputError, match="low_s"):
            await kms.use_key("payments/eth", "SIGN", b"m", low_s=False)


async def test_openapi_documents_the_options(plane):
    async with aiohttp.ClientSession() as session:
        async with session.get(plane.url + "/openapi.json") as rsp:
            doc = await rsp.json()
    schemas = doc["components"]["schemas"]
    sign = schemas["SignRequest"]["properties"]
    assert sign["signature_format"]["enum"] == ["der", "raw"]
    assert {"prehashed", "recovery_id", "low_s"} <= set(sign)
    assert {"signature_format", "prehashed"} <= set(schemas["VerifyRequest"]["properties"])
    assert "recovery_id" not in schemas["VerifyRequest"]["properties"]
    assert schemas["Result"]["properties"]["recovery_id"]["maximum"] == 1


async def test_rsa_pkcs1v15_over_http(plane):
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding
    key = await plane.service().create_key(name="payments/rsa", usage="SIGNING",
                                           algorithm="RSA-2048", owner="payments")
    path = "/v1/keys/payments/rsa"
    status, body = await post(plane, f"{path}:sign", {"input": b64(b"jws"),
                                                      "rsa_padding": "pkcs1v15"})
    assert status == 200, body
    signature = base64.b64decode(body["signature"])
    serialization.load_pem_public_key(key.public_key_pem.encode()).verify(
        signature, b"jws", padding.PKCS1v15(), hashes.SHA256())
    status, body = await post(plane, f"{path}:verify", {
        "input": b64(b"jws"), "signature": b64(signature), "rsa_padding": "pkcs1v15"})
    assert status == 200 and body == {"valid": True}
    status, body = await post(plane, f"{P256}:sign", {"input": b64(b"x"),
                                                      "rsa_padding": "pkcs1v15"})
    assert status == 400 and body["error"]["field"] == "rsa_padding", body
