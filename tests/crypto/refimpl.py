"""Slow, plain-Python reference verifiers written from the RFCs, for interop tests.

Verifying qkms's signatures with the same OpenSSL that made them proves
little; these share no code with ``cryptography``. They are checked against
published vectors in test_crypto_interop before being trusted. Not
constant-time, test use only.
"""

from __future__ import annotations

import hashlib
import os

# --- Ed25519 verification, RFC 8032 section 5.1.7 --------------------------------

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, -1, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _recover_x(y: int, sign: int) -> int | None:
    if y >= _P:
        return None
    x2 = (y * y - 1) * pow(_D * y * y + 1, -1, _P) % _P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P:
        return None
    return _P - x if (x & 1) != sign else x


def _decode(point: bytes) -> tuple[int, int, int, int] | None:
    y = int.from_bytes(point, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    x = _recover_x(y, sign)
    return None if x is None else (x, y, 1, x * y % _P)


def _add(p: tuple, q: tuple) -> tuple[int, int, int, int]:
    a = (p[1] - p[0]) * (q[1] - q[0]) % _P
    b = (p[1] + p[0]) * (q[1] + q[0]) % _P
    c = 2 * p[3] * q[3] * _D % _P
    d = 2 * p[2] * q[2] % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return e * f % _P, g * h % _P, f * g % _P, e * h % _P


def _mul(k: int, p: tuple) -> tuple:
    q = (0, 1, 1, 0)
    while k:
        if k & 1:
            q = _add(q, p)
        p, k = _add(p, p), k >> 1
    return q


def _same(p: tuple, q: tuple) -> bool:
    return (p[0] * q[2] - q[0] * p[2]) % _P == 0 and (p[1] * q[2] - q[1] * p[2]) % _P == 0


_GY = 4 * pow(5, -1, _P) % _P
_G = (_recover_x(_GY, 0), _GY, 1, _recover_x(_GY, 0) * _GY % _P)


def ed25519_verify(public: bytes, message: bytes, signature: bytes) -> bool:
    if len(public) != 32 or len(signature) != 64:
        return False
    a, r = _decode(public), _decode(signature[:32])
    s = int.from_bytes(signature[32:], "little")
    if a is None or r is None or s >= _L:
        return False
    h = int.from_bytes(hashlib.sha512(signature[:32] + public + message).digest(), "little") % _L
    return _same(_mul(s, _G), _add(r, _mul(h, a)))


# --- ECDSA verification over SHA-256, SEC 1 section 4.1.4 -------------------------

CURVES = {  # p, a, b, n, Gx, Gy  (SEC 2 / FIPS 186-5)
    "P-256": (
        2**256 - 2**224 + 2**192 + 2**96 - 1,
        -3,
        0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B,
        0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
        0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
        0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
    ),
    "secp256k1": (
        2**256 - 2**32 - 977,
        0,
        7,
        0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141,
        0x79BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798,
        0x483ADA7726A3C4655DA4FBFC0E1108A8FD17B448A68554199C47D08FFB10D4B8,
    ),
}


def _ec_add(p1: tuple | None, p2: tuple | None, p: int, a: int) -> tuple | None:
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    if p1[0] == p2[0] and (p1[1] + p2[1]) % p == 0:
        return None
    if p1 == p2:
        slope = (3 * p1[0] * p1[0] + a) * pow(2 * p1[1], -1, p) % p
    else:
        slope = (p2[1] - p1[1]) * pow(p2[0] - p1[0], -1, p) % p
    x = (slope * slope - p1[0] - p2[0]) % p
    return x, (slope * (p1[0] - x) - p1[1]) % p


def _ec_mul(k: int, point: tuple, p: int, a: int) -> tuple | None:
    result = None
    while k:
        if k & 1:
            result = _ec_add(result, point, p, a)
        point, k = _ec_add(point, point, p, a), k >> 1
    return result


def ecdsa_verify(curve: str, x: int, y: int, message: bytes, r: int, s: int) -> bool:
    p, a, b, n, gx, gy = CURVES[curve]
    if (y * y - x * x * x - a * x - b) % p or not (0 < r < n and 0 < s < n):
        return False
    e = int.from_bytes(hashlib.sha256(message).digest(), "big")
    w = pow(s, -1, n)
    point = _ec_add(_ec_mul(e * w % n, (gx, gy), p, a), _ec_mul(r * w % n, (x, y), p, a), p, a)
    return point is not None and point[0] % n == r


# --- RSASSA-PSS verification and RSAES-OAEP encryption, RFC 8017 (SHA-256) -------

_H_LEN = 32


def _mgf1(seed: bytes, length: int) -> bytes:
    out = b"".join(
        hashlib.sha256(seed + i.to_bytes(4, "big")).digest()
        for i in range((length + _H_LEN - 1) // _H_LEN)
    )
    return out[:length]


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def rsa_pss_verify(n: int, e: int, message: bytes, signature: bytes) -> tuple[bool, int]:
    """EMSA-PSS-VERIFY (section 9.1.2); returns (valid, salt length found)."""
    k, em_bits = (n.bit_length() + 7) // 8, n.bit_length() - 1
    em_len = (em_bits + 7) // 8
    s = int.from_bytes(signature, "big")
    if len(signature) != k or s >= n:
        return False, -1
    em = pow(s, e, n).to_bytes(em_len, "big")
    if em[-1] != 0xBC:
        return False, -1
    masked_db, h = em[: em_len - _H_LEN - 1], em[em_len - _H_LEN - 1 : -1]
    top_bits = 8 * em_len - em_bits
    if top_bits and masked_db[0] >> (8 - top_bits):
        return False, -1
    db = bytearray(_xor(masked_db, _mgf1(h, len(masked_db))))
    db[0] &= 0xFF >> top_bits
    separator = db.find(b"\x01")
    if separator < 0 or any(db[:separator]):
        return False, -1
    salt = bytes(db[separator + 1 :])
    m_hash = hashlib.sha256(message).digest()
    return hashlib.sha256(b"\x00" * 8 + m_hash + salt).digest() == h, len(salt)


def rsa_oaep_encrypt(n: int, e: int, message: bytes, label: bytes = b"") -> bytes:
    """RSAES-OAEP-ENCRYPT (section 7.1.1) with SHA-256 and MGF1-SHA256."""
    k = (n.bit_length() + 7) // 8
    padding = b"\x00" * (k - len(message) - 2 * _H_LEN - 2)
    db = hashlib.sha256(label).digest() + padding + b"\x01" + message
    seed = os.urandom(_H_LEN)
    masked_db = _xor(db, _mgf1(seed, len(db)))
    masked_seed = _xor(seed, _mgf1(masked_db, _H_LEN))
    em = int.from_bytes(b"\x00" + masked_seed + masked_db, "big")
    return pow(em, e, n).to_bytes(k, "big")
