"""qkms's outputs accepted by implementations that share no code with it.

* Ed25519, ECDSA, RSA-PSS, RSA-OAEP: the plain-Python RFC implementations in
  refimpl.py (first checked against published vectors below), fed from
  qkms's JWKs, so the JWK members are exercised too.
* JWKs and JWS: joserfc, when installed, imports qkms's JWKs and verifies
  compact JWSs whose signatures qkms made (joserfc runs on cryptography, so
  this proves encodings, not the primitives).
* ML-DSA: dilithium-py (pure Python FIPS 204), both directions.
* ML-KEM: kyber-py (pure Python FIPS 203), both directions, all sizes.
* Falcon: no independent implementation is installed; qkms's signatures are
  checked with pqcrypto's own verify on the raw public key, which proves the
  detached format and the stored pair, not the primitive.
"""

from __future__ import annotations

import base64
import json

import pytest
from dilithium_py.ml_dsa import ML_DSA_44, ML_DSA_65, ML_DSA_87
from kyber_py.ml_kem import ML_KEM_512, ML_KEM_768, ML_KEM_1024
from pqcrypto.sign import falcon_512, falcon_1024

from qkms.crypto import suite_for
from tests.crypto import refimpl
from tests.crypto.helpers import der_integers, rsp_records

MESSAGES = [b"", b"x", b"attack at dawn" * 100]
DILITHIUM = {"ML-DSA-44": ML_DSA_44, "ML-DSA-65": ML_DSA_65, "ML-DSA-87": ML_DSA_87}
KYBER = {"ML-KEM-512": ML_KEM_512, "ML-KEM-768": ML_KEM_768, "ML-KEM-1024": ML_KEM_1024}


def _int(member: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(member + "=" * (-len(member) % 4)), "big")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --- the reference implementations are right before they judge anything -------------


def test_refimpl_ecdsa_secp256k1_agrees_with_published_vectors() -> None:
    records = [
        r for r in rsp_records("asymmetric/ECDSA/SECP256K1/SigGen.txt")
        if r["_section"].get("_name") == "K-256,SHA-256"
    ][:5]
    for r in records:
        args = [int(r[k], 16) for k in ("Qx", "Qy")]
        msg, sig = bytes.fromhex(r["Msg"]), (int(r["R"], 16), int(r["S"], 16))
        assert refimpl.ecdsa_verify("secp256k1", *args, msg, *sig)
        assert not refimpl.ecdsa_verify("secp256k1", *args, msg + b"!", *sig)


def test_refimpl_rejects_what_it_should() -> None:
    assert not refimpl.ed25519_verify(b"\x00" * 32, b"m", b"\x00" * 64)
    p256 = refimpl.CURVES["P-256"]
    assert not refimpl.ecdsa_verify("P-256", p256[4], p256[5] + 1, b"m", 1, 1)


# --- classical signatures checked by the reference code ----------------------------


def test_ed25519_signatures_verify_in_reference_code(keys) -> None:
    key = keys.private("Ed25519")
    raw = base64.urlsafe_b64decode(key.public().jwk("k")["x"] + "=")
    for message in MESSAGES:
        signature = key.sign(message)
        assert refimpl.ed25519_verify(raw, message, signature)
        assert not refimpl.ed25519_verify(raw, message + b"?", signature)


@pytest.mark.parametrize("name,curve", [("ECDSA-P256", "P-256"), ("ECDSA-secp256k1", "secp256k1")])
def test_ecdsa_signatures_verify_in_reference_code(name, curve, keys) -> None:
    key = keys.private(name)
    jwk = key.public().jwk("k")
    x, y = _int(jwk["x"]), _int(jwk["y"])
    for message in MESSAGES:
        r, s = der_integers(key.sign(message))
        assert refimpl.ecdsa_verify(curve, x, y, message, r, s)
        assert not refimpl.ecdsa_verify(curve, x, y, message + b"?", r, s)


@pytest.mark.parametrize("name", ["RSA-2048", "RSA-4096"])
def test_rsa_pss_signatures_verify_in_reference_code(name, keys) -> None:
    key = keys.private(name)
    jwk = key.public().jwk("k")
    n, e = _int(jwk["n"]), _int(jwk["e"])
    for message in MESSAGES:
        valid, salt_len = refimpl.rsa_pss_verify(n, e, message, key.sign(message))
        assert valid and salt_len == 32
        assert not refimpl.rsa_pss_verify(n, e, message + b"?", key.sign(message))[0]


@pytest.mark.parametrize("name", ["RSA-2048", "RSA-4096"])
@pytest.mark.parametrize("aad", [b"", b"tenant=a"])
def test_rsa_oaep_from_reference_code_decrypts_in_qkms(name, aad, keys) -> None:
    key = keys.private(name)
    jwk = key.public().jwk("k")
    ciphertext = refimpl.rsa_oaep_encrypt(_int(jwk["n"]), _int(jwk["e"]), b"wrapped key", aad)
    assert key.decrypt(ciphertext, aad) == b"wrapped key"


# --- JOSE -------------------------------------------------------------------------------


def _raw_ecdsa(der: bytes) -> bytes:
    r, s = der_integers(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@pytest.mark.filterwarnings("ignore:EdDSA is deprecated")  # RFC 9864; see classical.py
@pytest.mark.parametrize(
    "name,convert",
    [("Ed25519", None), ("ECDSA-P256", _raw_ecdsa), ("ECDSA-secp256k1", _raw_ecdsa),
     ("RSA-2048", None)],
)
def test_jose_library_accepts_jwk_and_jws(name, convert, keys) -> None:
    from joserfc import jwk as jose_jwk  # an independent JOSE library (test dependency)
    from joserfc import jws

    jose_jwk.register_secp256k1()
    key = keys.private(name)
    jwk = key.public().jwk("kid-7")
    header = _b64(json.dumps({"alg": jwk["alg"], "kid": "kid-7"}).encode())
    signing_input = f"{header}.{_b64(b'{}')}"
    signature = key.sign(signing_input.encode())
    token = f"{signing_input}.{_b64(convert(signature) if convert else signature)}"
    imported = jose_jwk.import_key(jwk)
    registry = jws.JWSRegistry(algorithms=[jwk["alg"]])
    assert jws.deserialize_compact(token, imported, registry=registry).payload == b"{}"


# --- ML-DSA with dilithium-py -----------------------------------------------------------


@pytest.mark.parametrize("name", list(DILITHIUM))
def test_mldsa_interop_with_dilithium_py(name, keys) -> None:
    other = DILITHIUM[name]
    seed = keys.stored(name)
    key = keys.private(name)
    public = key.public().raw()
    pk, sk = other.key_derive(seed)
    assert pk == public  # same key from the same seed
    for message in MESSAGES[:2]:
        assert other.verify(public, message, key.sign(message))
        assert key.public().verify(message, other.sign(sk, message))
        assert not key.public().verify(message, other.sign(sk, message, ctx=b"c"))


# --- ML-KEM with kyber-py -----------------------------------------------------------------


@pytest.mark.parametrize("name", list(KYBER))
def test_mlkem_interop_with_kyber_py(name, keys) -> None:
    other = KYBER[name]
    key = keys.private(name)
    public = key.public().raw()
    shared, ciphertext = other.encaps(public)  # kyber-py's order is (key, ciphertext)
    assert key.decapsulate(ciphertext) == shared
    ek, dk = other.keygen()
    ciphertext, shared = suite_for(name).load_public(ek).encapsulate()
    assert other.decaps(dk, ciphertext) == shared
    if name == "ML-KEM-512":
        # qkms stores the standard FIPS 203 dk for ML-KEM-512: kyber-py can use it directly
        ciphertext, shared = key.public().encapsulate()
        assert other.decaps(keys.stored(name), ciphertext) == shared
    else:
        ek, _ = other.key_derive(keys.stored(name))  # d || z, as qkms stores it
        assert ek == public


# --- Falcon (no independent implementation available) --------------------------------------


@pytest.mark.parametrize("name,module", [("Falcon-512", falcon_512), ("Falcon-1024", falcon_1024)])
def test_falcon_signatures_verify_in_pqclean_directly(name, module, keys) -> None:
    key = keys.private(name)
    for message in MESSAGES:
        signature = key.sign(message)
        assert len(signature) <= module.SIGNATURE_SIZE
        assert module.verify(key.public().raw(), message, signature)
