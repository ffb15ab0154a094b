"""The data plane over HTTP: authorization matrix, every operation family, batches, errors."""

from __future__ import annotations

import base64

import aiohttp
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from qkms.client import QkmsClient
from qkms.errors import KeyNotFoundError, KeyRevokedError, OperationNotAllowedError
from tests.server.common import TOKENS


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def post(plane, path: str, body, token: str | None = "checkout", **kwargs):
    headers = {"Authorization": f"Bearer {TOKENS.get(token, token)}"} if token else {}
    async with aiohttp.ClientSession() as session:
        async with session.post(plane.url + path, json=body, headers=headers, **kwargs) as rsp:
            return rsp.status, await rsp.json(content_type=None)


SIGN = "/v1/keys/payments/user-service-signing:sign"


@pytest.mark.parametrize("token,status,code", [
    (None, 401, "unauthenticated"),
    ("not-a-token", 401, "unauthenticated"),
    ("expired", 401, "unauthenticated"),
    ("reader", 403, "forbidden"),       # a token without RBAC
    ("billing", 403, "forbidden"),      # a token of another namespace
    ("prod", 403, "forbidden"),         # a token of another environment
    ("checkout", 200, None),
])
async def test_authorization_matrix_is_enforced_and_audited(plane, token, status, code):
    got, body = await post(plane, SIGN, {"input": b64(b"m")}, token)
    assert got == status, body
    if code:
        assert body["error"]["code"] == code
        denial = plane.seen[-1]
        assert (denial.operation, denial.result) == ("SIGN", "denied")
        assert denial.key_name == "payments/user-service-signing"
    else:
        assert body["key_id"].startswith("key_dev_") and body["version"] == 1


async def test_every_operation_family(plane):
    async with QkmsClient(plane.url, token=TOKENS["checkout"]) as kms:
        for key in ("payments/user-service-signing", "payments/secure-service-signing",
                    "payments/release-signing", "payments/ecdsa", "payments/falcon"):
            sig = await kms.use_key(key, "SIGN", b"hello")
            assert await kms.use_key(key, "VERIFY", b"hello", signature=sig.signature)
            assert not await kms.use_key(key, "VERIFY", b"other", signature=sig.signature)
        for key in ("payments/storage-encryption", "payments/secure-service-kem",
                    "payments/hybrid-kem", "payments/rsa-oaep"):
            token = await kms.use_key(key, "ENCRYPT", b"secret", context="ctx")
            assert (await kms.use_key(key, "DECRYPT", token, context="ctx")).plaintext \
                == b"secret"
        for key in ("payments/secure-service-kem", "payments/hybrid-kem"):
            encap = await kms.use_key(key, "ENCAPSULATE")
            decap = await kms.use_key(key, "DECAPSULATE", encap.ciphertext)
            assert decap.shared_secret == encap.shared_secret
        derived = await kms.use_key("payments/derivation", "DERIVE", context="app", length=64)
        assert len(derived.derived_key) == 64


async def test_signature_verifies_with_the_projected_public_key(plane, tmp_path):
    async with QkmsClient(plane.url, token=TOKENS["checkout"]) as kms:
        sig = await kms.use_key("payments/user-service-signing", "SIGN", b"hi")
    pem = (tmp_path / "out/payments/user-service-signing-public/public.pem").read_bytes()
    load_pem_public_key(pem).verify(sig.signature, b"hi")


async def test_batch_like_transit_batch_input(plane):
    items = [{"input": b64(f"m{i}".encode())} for i in range(100)]
    status, body = await post(plane, SIGN, {"batch_input": items})
    assert status == 200 and len(body["batch_results"]) == 100
    verify = [{"input": b64(f"m{i}".encode()), "signature": r["signature"]}
              for i, r in enumerate(body["batch_results"])]
    verify[3]["signature"] = body["batch_results"][4]["signature"]
    status, body = await post(plane, "/v1/keys/payments/user-service-signing:verify",
                              {"batch_input": verify})
    results = body["batch_results"]
    assert [r.get("valid") for r in results[:5]] == [True, True, True, False, True]
    # A structural error refuses the whole batch, naming the item...
    verify[5] = {"input": "!!!", "signature": verify[5]["signature"]}
    status, body = await post(plane, "/v1/keys/payments/user-service-signing:verify",
                              {"batch_input": verify})
    assert status == 400 and body["error"]["field"] == "batch_input[5].input"
    # ...while what fails only at run time is reported per item.
    tokens = (await post(plane, "/v1/keys/payments/storage-encryption:encrypt",
                         {"batch_input": [{"input": b64(b"a")}, {"input": b64(b"b")}]}))[1]
    good, bad = (r["ciphertext"] for r in tokens["batch_results"])
    status, body = await post(plane, "/v1/keys/payments/storage-encryption:decrypt",
                              {"batch_input": [{"ciphertext": good},
                                               {"ciphertext": bad[:-4] + "AAAA"}]})
    first, second = body["batch_results"]
    assert status == 200 and base64.b64decode(first["plaintext"]) == b"a"
    assert second["error"]["code"] == "decryption_failed" and second["status"] == 400


async def test_a_batch_of_plain_signs_audits_each_item_and_falls_back_when_refused(plane):
    """Plain SIGNs take one provider call and one group commit (service.sign_many): one
    entry per item, each with its own keyed digest.  Where the version cannot sign, the
    batch goes item by item, so each item is refused and audited as it would be alone;
    an item with options or a version named goes item by item too."""
    items = [{"input": b64(b"same")}, {"input": b64(b"other")}, {"input": b64(b"same")}]
    before = len(plane.seen)
    status, body = await post(plane, "/v1/keys/payments/ecdsa:sign", {"batch_input": items})
    assert status == 200 and len(body["batch_results"]) == 3
    signed = [e for e in plane.seen[before:] if e.operation == "SIGN"]
    assert [e.result for e in signed] == ["success"] * 3
    digests = [e.digests["data"] for e in signed]
    assert digests[0] == digests[2] != digests[1]
    assert [e.sequence for e in signed] == list(range(signed[0].sequence,
                                                      signed[0].sequence + 3))
    mixed = [{"input": b64(b"m"), "signature_format": "raw"}, {"input": b64(b"n")}]
    status, body = await post(plane, "/v1/keys/payments/ecdsa:sign", {"batch_input": mixed})
    assert status == 200 and len(base64.b64decode(body["batch_results"][0]["signature"])) == 64
    await plane.service().revoke_key("payments/ecdsa", "test")
    before = len(plane.seen)
    status, body = await post(plane, "/v1/keys/payments/ecdsa:sign", {"batch_input": items})
    assert status == 200
    assert [(r["error"]["code"], r["status"]) for r in body["batch_results"]] == \
        [("key_revoked", 409)] * 3
    refused = [e for e in plane.seen[before:] if e.operation == "SIGN"]
    assert [e.result for e in refused] == ["denied"] * 3


@pytest.mark.parametrize("path,body,status,code,field", [
    (SIGN, {"input": "%%%"}, 400, "invalid_input", "input"),
    (SIGN, {}, 400, "invalid_input", "input"),
    ("/v1/keys/payments/user-service-signing:explode", {"input": "AA=="}, 400, "invalid_input",
     "operation"),
    ("/v1/keys/payments/nope:sign", {"input": "AA=="}, 404, "key_not_found", None),
    ("/v1/keys/payments/storage-encryption:sign", {"input": "AA=="}, 422,
     "operation_not_allowed", None),
    ("/v1/keys/payments/storage-encryption:decrypt", {"ciphertext": "qkms:v1:x:y"}, 400,
     "invalid_input", "data"),
    (SIGN, {"batch_input": []}, 400, "invalid_input", "batch_input"),
])
async def test_errors_are_json_with_stable_codes(plane, path, body, status, code, field):
    got, answer = await post(plane, path, body)
    assert got == status, answer
    assert answer["error"]["code"] == code
    assert answer["error"].get("field") == field
    assert answer["request_id"]


async def test_wrong_content_type_and_oversized_body(plane):
    headers = {"Authorization": f"Bearer {TOKENS['checkout']}", "Content-Type": "text/plain"}
    async with aiohttp.ClientSession() as session:
        async with session.post(plane.url + SIGN, data=b"hello", headers=headers) as rsp:
            assert rsp.status == 415
        headers["Content-Type"] = "application/json"
        big = b'{"input": "' + b"A" * (2 * 1024 * 1024) + b'"}'
        async with session.post(plane.url + SIGN, data=big, headers=headers) as rsp:
            assert rsp.status == 413


async def test_client_raises_the_service_errors(plane):
    service = plane.standalone.registry.all()[0]
    await service.revoke_key("payments/ecdsa", "test")
    async with QkmsClient(plane.url, token=TOKENS["checkout"]) as kms:
        with pytest.raises(KeyRevokedError):
            await kms.use_key("payments/ecdsa", "SIGN", b"x")
        with pytest.raises(KeyNotFoundError):
            await kms.use_key("payments/missing", "SIGN", b"x")
        with pytest.raises(OperationNotAllowedError):
            await kms.use_key("payments/storage-encryption", "SIGN", b"x")


async def test_health_metrics_audit_and_openapi(plane):
    async with QkmsClient(plane.url, token=TOKENS["checkout"]) as kms:
        for _ in range(3):
            await kms.use_key("payments/user-service-signing", "SIGN", b"x")
        await post(plane, SIGN, {"input": b64(b"x")}, "reader")  # one denial
    async with aiohttp.ClientSession() as session:
        async with session.get(plane.url + "/health/keys") as rsp:
            assert rsp.status == 200 and (await rsp.json())["status"] == "healthy"
        async with session.get(plane.url + "/metrics/keys",
                               headers={"Authorization": f"Bearer {TOKENS['monitor']}"}) as rsp:
            text = await rsp.text()
        async with session.get(plane.url + "/openapi.json") as rsp:
            assert (await rsp.json())["openapi"].startswith("3.")
        async with session.get(plane.url + "/audit/keys?limit=5",
                               headers={"Authorization": f"Bearer {TOKENS['auditor']}"}) as rsp:
            audit = await rsp.json()
            assert rsp.status == 200 and len(audit["dev"]["recent"]) == 5
        async with session.get(plane.url + "/audit/keys",
                               headers={"Authorization": f"Bearer {TOKENS['checkout']}"}) as rsp:
            assert rsp.status == 403
    assert 'qkms_operations_total{algorithm="Ed25519",operation="SIGN",result="success"} 3.0' \
        in text
    assert 'qkms_operations_total{algorithm="Ed25519",operation="SIGN",result="denied"} 1.0' \
        in text
    assert 'qkms_keys{environment="dev",state="ACTIVE"} 10.0' in text
    assert 'qkms_key_next_rotation_seconds{key="payments/user-service-signing"}' in text
    assert "qkms_provider_latency_seconds_bucket" in text


async def test_a_key_id_cannot_reach_a_key_outside_the_authorized_one(plane):
    """Authorization is for the key in the path; a version ID of another key is refused."""
    service = plane.standalone.registry.all()[0]
    other = (await service.get_key("payments/ecdsa")).key_id
    status, body = await post(plane, SIGN, {"input": b64(b"m"), "key_id": other})
    assert status == 400 and body["error"]["field"] == "key_id"
    status, body = await post(plane, SIGN, {"batch_input": [{"input": b64(b"m")},
                                                            {"input": b64(b"m"),
                                                             "key_id": other}]})
    assert status == 400 and body["error"]["field"] == "batch_input[1].key_id"


async def test_qkms_call_cli_signs_and_verifies_through_the_api(plane, tmp_path):
    import asyncio
    import os
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root / "operator"), "QKMS_TOKEN": TOKENS["checkout"],
           "QKMS_URL": plane.url}

    async def qkms(*args: str, stdin: bytes = b"") -> tuple[int, bytes]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "qkms", "call", *args, env=env, cwd=tmp_path,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate(stdin)
        return proc.returncode, out

    code, sig = await qkms("sign", "payments/user-service-signing", stdin=b"payload")
    assert code == 0 and len(base64.b64decode(sig)) == 64
    (tmp_path / "sig").write_bytes(sig)
    code, out = await qkms("verify", "payments/user-service-signing", "--signature", "sig",
                           stdin=b"payload")
    assert (code, out.strip()) == (0, b"valid")
    code, _ = await qkms("verify", "payments/user-service-signing", "--signature", "sig",
                         stdin=b"tampered")
    assert code == 1
