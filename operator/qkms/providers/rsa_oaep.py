"""RSAES-OAEP decoding (RFC 8017 section 7.1.2, SHA-256 and MGF1-SHA256) after a raw RSA.

Why: qkms binds a ciphertext to its key version and context by using them as the
OAEP label, but some tokens cannot take a label or SHA-256 in OAEP (SoftHSM 2.6
accepts OAEP only with SHA-1 and no label).  Such a token still computes the
private-key operation itself (``CKM_RSA_X_509``: the key never leaves it), and the
encoded message is checked here.  Every failure raises the same error with the
same message, so the result reveals nothing about which check failed (Manger's
attack needs that distinction); Python cannot promise constant time, which is why
the token's own OAEP is tried first.
"""

from __future__ import annotations

import hashlib
import hmac

from qkms.crypto.base import InvalidCiphertext

_H = 32  # SHA-256 output length


def _mgf1(seed: bytes, length: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return bytes(out[:length])


def oaep_decode(encoded: bytes, label: bytes, k: int) -> bytes:
    """The message inside ``encoded`` (the raw RSA result, ``k`` bytes), or InvalidCiphertext."""
    em = encoded.rjust(k, b"\x00")  # a token may drop leading zero bytes
    if len(em) != k or k < 2 * _H + 2:
        raise InvalidCiphertext("RSA-OAEP decryption failed")
    masked_seed, masked_db = em[1:1 + _H], em[1 + _H:]
    seed = bytes(a ^ b for a, b in zip(masked_seed, _mgf1(masked_db, _H), strict=True))
    db = bytes(a ^ b for a, b in zip(masked_db, _mgf1(seed, k - _H - 1), strict=True))
    good = hmac.compare_digest(db[:_H], hashlib.sha256(label).digest()) & (em[0] == 0)
    rest = db[_H:]
    separator = len(rest) - len(rest.lstrip(b"\x00"))
    good &= separator < len(rest) and rest[separator:separator + 1] == b"\x01"
    if not good:
        raise InvalidCiphertext("RSA-OAEP decryption failed")
    return rest[separator + 1:]
