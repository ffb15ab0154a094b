"""ML-KEM and ML-DSA against NIST vectors; the JOSE drafts' AKP examples.

Sources: cryptography-vectors 48 (kat_MLKEM_*.rsp, kat_MLDSA_*_det_pure.rsp)
and the ACVP subset vendored in tests/vectors/acvp (see its SOURCE.md).
"""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from qkms.crypto import suite_for
from qkms.crypto.encoding import spki_der
from qkms.errors import InvalidInputError
from tests.crypto.helpers import rsp_records, vector_json

KAT_COUNT = 4
KEM_SIZES = ["512", "768", "1024"]
DSA_SIZES = ["44", "65", "87"]


# --- ML-KEM -------------------------------------------------------------------------


@pytest.mark.parametrize("size", KEM_SIZES)
def test_mlkem_nist_kat_keys_and_decapsulation(size) -> None:
    """Keys from the KAT's seeds (512: its dk); ct -> ss, and implicit rejection ct_n -> ss_n."""
    suite = suite_for(f"ML-KEM-{size}")
    records = list(rsp_records(f"asymmetric/MLKEM/kat_MLKEM_{size}.rsp", limit=KAT_COUNT))
    assert len(records) == KAT_COUNT
    for r in records:
        stored = bytes.fromhex(r["sk"] if size == "512" else r["d"] + r["z"])
        key = suite.load_private(stored)
        assert key.public().raw() == bytes.fromhex(r["pk"])
        assert key.decapsulate(bytes.fromhex(r["ct"])) == bytes.fromhex(r["ss"])
        assert key.decapsulate(bytes.fromhex(r["ct_n"])) == bytes.fromhex(r["ss_n"])


@pytest.mark.parametrize("size", ["768", "1024"])
def test_mlkem_acvp_keygen(size) -> None:
    """ML-KEM-512 has no keyGen check: pqcrypto cannot derive keys from (d, z)."""
    cases = vector_json("acvp/ML-KEM-keyGen-FIPS203.json")["testGroups"][f"ML-KEM-{size}"]
    for case in cases:
        key = suite_for(f"ML-KEM-{size}").load_private(bytes.fromhex(case["d"] + case["z"]))
        assert key.public().raw() == bytes.fromhex(case["ek"])


def test_mlkem512_acvp_decapsulation() -> None:
    groups = vector_json("acvp/ML-KEM-512-decap-FIPS203.json")["testGroups"]
    suite = suite_for("ML-KEM-512")
    val = groups["decapsulation"]
    key = suite.load_private(bytes.fromhex(val["dk"]))
    assert key.public().raw() == bytes.fromhex(val["ek"])
    reasons = set()
    for case in val["tests"]:
        assert key.decapsulate(bytes.fromhex(case["c"])) == bytes.fromhex(case["k"])
        reasons.add(case["reason"])
    assert reasons == {"no modification", "modify ciphertext"}
    for case in groups["encapsulation_cases"]:
        key = suite.load_private(bytes.fromhex(case["dk"]))
        assert key.public().raw() == bytes.fromhex(case["ek"])
        assert key.decapsulate(bytes.fromhex(case["c"])) == bytes.fromhex(case["k"])


def test_mlkem512_spki_writer_matches_cryptography_for_768(keys) -> None:
    """Our DER writer builds the same SPKI that cryptography builds for ML-KEM-768."""
    raw = keys.private("ML-KEM-768").public().raw()
    expected = mlkem.MLKEM768PublicKey.from_public_bytes(raw).public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    )
    assert spki_der("2.16.840.1.101.3.4.4.2", raw) == expected


def test_mlkem512_rejects_keys_failing_fips203_checks(keys) -> None:
    suite = suite_for("ML-KEM-512")
    dk = keys.stored("ML-KEM-512")
    ek = bytearray(dk[768:1568])
    ek[0], ek[1] = 0xFF, 0xFF  # first coefficient 0xFFF >= q
    with pytest.raises(InvalidInputError):
        suite.load_public(bytes(ek))
    tampered = bytearray(dk)
    tampered[1568] ^= 1  # H(ek) no longer matches
    with pytest.raises(InvalidInputError):
        suite.load_private(bytes(tampered))
    assert hashlib.sha3_256(dk[768:1568]).digest() == dk[1568:1600]


# --- ML-DSA -------------------------------------------------------------------------


@pytest.mark.parametrize("size", DSA_SIZES)
def test_mldsa_nist_kat_keys_and_signatures(size) -> None:
    """Keys from xi; each KAT signature verifies under its 16-byte context, and not without it."""
    suite = suite_for(f"ML-DSA-{size}")
    records = list(rsp_records(f"asymmetric/MLDSA/kat_MLDSA_{size}_det_pure.rsp", limit=KAT_COUNT))
    assert len(records) == KAT_COUNT
    for r in records:
        key = suite.load_private(bytes.fromhex(r["xi"]))
        public = key.public()
        assert public.raw() == bytes.fromhex(r["pk"])
        signed, message = bytes.fromhex(r["sm"]), bytes.fromhex(r["msg"])
        signature = signed[: len(signed) - len(message)]
        assert signed[len(signature) :] == message
        context = bytes.fromhex(r["ctx"])
        assert public.verify_with_context(message, signature, context)
        assert not public.verify_with_context(message, signature, context[:-1])
        assert not public.verify(message, signature)  # qkms's verify uses the empty context
        ours = key.sign_with_context(message, context)
        assert suite.load_public(public.raw()).verify_with_context(message, ours, context)


@pytest.mark.parametrize("size", DSA_SIZES)
def test_mldsa_pure_signing_uses_nists_expanded_key(size) -> None:
    """SIGN's pure ML-DSA runs PQClean's signer over the key dilithium-py expands from xi:
    the expansion equals the KAT's sk, and each signature verifies under the KAT's public
    key with OpenSSL's ML-DSA (through cryptography), not only with qkms's own verify."""
    from qkms.crypto.pqc import _MLDSA_FAST

    derive, _ = _MLDSA_FAST[f"ML-DSA-{size}"]
    public_cls = getattr(mldsa, f"MLDSA{size}PublicKey")
    for r in rsp_records(f"asymmetric/MLDSA/kat_MLDSA_{size}_det_pure.rsp", limit=KAT_COUNT):
        xi, message = bytes.fromhex(r["xi"]), bytes.fromhex(r["msg"])
        assert derive(xi) == (bytes.fromhex(r["pk"]), bytes.fromhex(r["sk"]))
        key = suite_for(f"ML-DSA-{size}").load_private(xi)
        signature = key.sign(message)
        assert key._expanded == bytes.fromhex(r["sk"])  # the fast signer was used
        public_cls.from_public_bytes(bytes.fromhex(r["pk"])).verify(signature, message)
        with pytest.raises(InvalidSignature):
            public_cls.from_public_bytes(bytes.fromhex(r["pk"])).verify(signature, message + b"!")


@pytest.mark.parametrize("size", DSA_SIZES)
def test_mldsa_acvp_keygen(size) -> None:
    cases = vector_json("acvp/ML-DSA-keyGen-FIPS204.json")["testGroups"][f"ML-DSA-{size}"]
    for case in cases:
        key = suite_for(f"ML-DSA-{size}").load_private(bytes.fromhex(case["seed"]))
        assert key.public().raw() == bytes.fromhex(case["pk"])


# --- JOSE AKP examples --------------------------------------------------------------

_JOSE_TO_QKMS = {"ML-DSA-44": "ML-DSA-44", "ML-DSA-65": "ML-DSA-65",
                 "ML-DSA-65-Ed25519": "Ed25519+ML-DSA-65"}


def _thumbprint(jwk: dict) -> str:
    """RFC 7638 thumbprint over the AKP required members (alg, kty, pub)."""
    canonical = json.dumps({k: jwk[k] for k in ("alg", "kty", "pub")},
                           separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "example", vector_json("jose/akp-examples.json")["akp_thumbprints"], ids=lambda e: e["alg"]
)
def test_akp_jwk_matches_the_drafts_example(example) -> None:
    suite = suite_for(_JOSE_TO_QKMS[example["alg"]])
    jwk = suite.load_private(bytes.fromhex(example["private_seed_hex"])).public().jwk("any")
    assert jwk["alg"] == example["alg"]
    assert _thumbprint(jwk) == example["kid"]


# --- Falcon stored form -------------------------------------------------------------


@pytest.mark.parametrize("name", ["Falcon-512", "Falcon-1024"])
def test_falcon_stored_pair_is_checked(name, keys) -> None:
    suite = suite_for(name)
    first, second = keys.stored(name), keys.stored(name, 1)
    half = len(first) - len(keys.private(name).public().raw())
    with pytest.raises(InvalidInputError):
        suite.load_private(first[:half] + second[half:])  # secret of one, public of the other
    with pytest.raises(InvalidInputError):
        suite.load_private(b"\x00" + first[1:])  # wrong header byte
