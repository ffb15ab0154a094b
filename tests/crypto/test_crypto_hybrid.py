"""Composite ML-DSA-65 + Ed25519 and X-Wing: the drafts' vectors and their structure.

Vectors: tests/vectors/composite-sigs (LAMPS draft), tests/vectors/jose (JOSE
composite example), tests/vectors/xwing (X-Wing draft -10); see the SOURCE.md
files. Interop: dilithium-py and the RFC 8032 reference check each composite
half; kyber-py recomputes X-Wing independently; xwing-kem (a separate PyPI
implementation of the draft) runs both directions when installed.
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from dilithium_py.ml_dsa import ML_DSA_65
from kyber_py.ml_kem import ML_KEM_768

from qkms.crypto import suite_for
from qkms.crypto.base import InvalidCiphertext
from qkms.crypto.hybrid import COMPOSITE_LABEL, composite_message
from tests.crypto import refimpl
from tests.crypto.helpers import vector_json

COMPOSITE = "Ed25519+ML-DSA-65"
MLDSA_SIG = 3309


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x80]) + data[index + 1 :]


# --- composite signature ----------------------------------------------------------------


@pytest.fixture(scope="module")
def lamps_vector() -> dict:
    data = vector_json("composite-sigs/testvectors-MLDSA65-Ed25519.json")
    case = data["tests"][0]
    return {k: base64.b64decode(v) for k, v in {"m": data["m"], **case}.items() if k != "tcId"}


def test_composite_lamps_vector_verifies(lamps_vector) -> None:
    public = suite_for(COMPOSITE).load_public(lamps_vector["pk"])
    assert public.verify(lamps_vector["m"], lamps_vector["s"])
    assert not public.verify(lamps_vector["m"] + b" ", lamps_vector["s"])


def test_composite_lamps_private_key_is_our_stored_form(lamps_vector) -> None:
    key = suite_for(COMPOSITE).load_private(lamps_vector["sk"])
    assert key.public().raw() == lamps_vector["pk"]
    signature = key.sign(lamps_vector["m"])
    assert suite_for(COMPOSITE).load_public(lamps_vector["pk"]).verify(lamps_vector["m"], signature)


@pytest.mark.parametrize("index", [0, MLDSA_SIG // 2, MLDSA_SIG - 1, MLDSA_SIG, MLDSA_SIG + 63],
                         ids=["mldsa-first", "mldsa-middle", "mldsa-last", "ed-first", "ed-last"])
def test_composite_flipping_either_half_fails(index, lamps_vector) -> None:
    public = suite_for(COMPOSITE).load_public(lamps_vector["pk"])
    assert not public.verify(lamps_vector["m"], _flip(lamps_vector["s"], index))


def test_composite_needs_both_halves_from_the_same_key(keys) -> None:
    mine, other = keys.private(COMPOSITE), keys.private(COMPOSITE, 1)
    ours, theirs = mine.sign(b"m"), other.sign(b"m")
    public = mine.public()
    assert public.verify(b"m", ours)
    assert not public.verify(b"m", ours[:MLDSA_SIG] + theirs[MLDSA_SIG:])
    assert not public.verify(b"m", theirs[:MLDSA_SIG] + ours[MLDSA_SIG:])
    assert not public.verify(b"m", ours[:MLDSA_SIG])
    assert not public.verify(b"m", ours[MLDSA_SIG:])


def test_composite_halves_are_the_drafts_components(keys) -> None:
    """ML-DSA-65 signs M' with ctx = Label, Ed25519 signs M' (checked by independent code)."""
    key = keys.private(COMPOSITE)
    raw = key.public().raw()
    signature = key.sign(b"payload")
    message = composite_message(b"payload")
    assert message.startswith(b"CompositeAlgorithmSignatures2025COMPSIG-MLDSA65-Ed25519-SHA512\x00")
    assert message.endswith(hashlib.sha512(b"payload").digest())
    assert ML_DSA_65.verify(raw[:1952], message, signature[:MLDSA_SIG], ctx=COMPOSITE_LABEL)
    assert not ML_DSA_65.verify(raw[:1952], message, signature[:MLDSA_SIG])
    assert refimpl.ed25519_verify(raw[1952:], message, signature[MLDSA_SIG:])


def test_composite_message_matches_the_jose_drafts_example() -> None:
    example = vector_json("jose/akp-examples.json")["composite_message_representative"]
    m_prime = composite_message(bytes.fromhex(example["message_hex"]))
    assert m_prime == bytes.fromhex(example["m_prime_hex"])


def test_composite_stored_form_is_mldsa_seed_then_ed25519(keys) -> None:
    stored = keys.stored(COMPOSITE)
    raw = keys.private(COMPOSITE).public().raw()
    assert suite_for("ML-DSA-65").load_private(stored[:32]).public().raw() == raw[:1952]
    assert suite_for("Ed25519").load_private(stored[32:]).public().raw() == raw[1952:]


# --- X-Wing ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def xwing_vector() -> dict:
    case = vector_json("xwing/draft-connolly-cfrg-xwing-kem-10.json")["vectors"][0]
    return {k: bytes.fromhex(v) for k, v in case.items()}


def test_xwing_draft_vector(xwing_vector) -> None:
    key = suite_for("X-Wing").load_private(xwing_vector["seed"])
    assert key.public().raw() == xwing_vector["pk"]
    assert key.decapsulate(xwing_vector["ct"]) == xwing_vector["ss"]
    assert key.decapsulate(_flip(xwing_vector["ct"], 1119)) != xwing_vector["ss"]


def test_xwing_draft_vector_encapsulation_recomputed_independently(xwing_vector) -> None:
    """EncapsulateDerand with the vector's eseed, by kyber-py and X25519, gives its ct and ss."""
    pk, eseed = xwing_vector["pk"], xwing_vector["eseed"]
    ephemeral = x25519.X25519PrivateKey.from_private_bytes(eseed[32:])
    ct_x = ephemeral.public_key().public_bytes_raw()
    ss_x = ephemeral.exchange(x25519.X25519PublicKey.from_public_bytes(pk[1184:]))
    ss_m, ct_m = ML_KEM_768._encaps_internal(pk[:1184], eseed[:32])
    ss = hashlib.sha3_256(ss_m + ss_x + ct_x + pk[1184:] + b"\\.//^\\").digest()
    assert ct_m + ct_x == xwing_vector["ct"] and ss == xwing_vector["ss"]


def test_xwing_matches_an_independent_recomputation(keys) -> None:
    """Seed expansion and combiner redone with kyber-py's ML-KEM and cryptography's X25519."""
    seed = keys.stored("X-Wing")
    key = keys.private("X-Wing")
    expanded = hashlib.shake_256(seed).digest(96)
    ek, dk = ML_KEM_768.key_derive(expanded[:64])
    sk_x = x25519.X25519PrivateKey.from_private_bytes(expanded[64:])
    pk_x = sk_x.public_key().public_bytes_raw()
    assert key.public().raw() == ek + pk_x
    ciphertext, shared = key.public().encapsulate()
    ct_m, ct_x = ciphertext[:1088], ciphertext[1088:]
    ss_m = ML_KEM_768.decaps(dk, ct_m)
    ss_x = sk_x.exchange(x25519.X25519PublicKey.from_public_bytes(ct_x))
    label = bytes.fromhex("5c2e2f2f5e5c")
    assert hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + label).digest() == shared


def test_xwing_small_order_share_is_invalid_ciphertext(keys) -> None:
    key = keys.private("X-Wing")
    ciphertext, _ = key.public().encapsulate()
    with pytest.raises(InvalidCiphertext):
        key.decapsulate(ciphertext[:1088] + b"\x00" * 32)


def test_xwing_interop_with_xwing_kem_package(keys) -> None:
    import xwing_kem  # an independent X-Wing implementation (test dependency)

    key = keys.private("X-Wing")
    shared, ciphertext = xwing_kem.encapsulate(key.public().raw())
    assert key.decapsulate(ciphertext) == shared
    theirs = xwing_kem.generate_keypair()
    ciphertext, shared = suite_for("X-Wing").load_public(theirs.public_key).encapsulate()
    assert xwing_kem.decapsulate(ciphertext, theirs.secret_key) == shared
