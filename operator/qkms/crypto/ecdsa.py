"""ECDSA signature forms for the ecosystems that consume them: low-S, raw r||s, recovery ids.

* **Low-S.**  ECDSA has two valid signatures per nonce, (r, s) and (r, n - s).  FIPS
  186-5 accepts both and OpenSSL returns either, but Bitcoin (BIP 146) and Ethereum
  (homestead, EIP-2) refuse s > n/2, and so do strict verifiers (libsecp256k1,
  noble-curves).  ``low_s`` picks s <= n/2.  Verification keeps accepting both.
* **Raw r||s** (IEEE P1363, JOSE RFC 7518 section 3.4, WebCrypto): r and s as 32-byte
  big-endian integers, 64 bytes for both curves here; DER (RFC 3279) is the default.
* **Recovery id** (SEC 1 v2 section 4.1.6): which of the candidate points R the signer's
  nonce gave, so a verifier can recover the public key from (r, s, id) and the digest, as
  Ethereum does.  It is found here by recovering the public key for each candidate and
  comparing with the key's own, which works whoever signed (software, AWS KMS, Azure).

Why plain Python arithmetic for recovery: ``cryptography`` exposes no point arithmetic
(only scalar multiplication of the generator, and ECDH's x coordinate), and the one
library that recovers keys over secp256k1 (libsecp256k1, via coincurve) covers one curve
and is the independent oracle the tests check this against.  Recovery only ever handles
public values (the signature, the digest, the public key), so it needs no constant-time
care; it costs a few milliseconds and runs only when a recovery id is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from qkms.errors import InvalidInputError

RAW_LEN = 64  # r || s, 32 bytes each, for both 256-bit curves
DIGEST_LEN = 32


@dataclass(frozen=True)
class Curve:
    """A short Weierstrass curve y^2 = x^3 + ax + b over GF(p), generator G of order n."""

    name: str
    p: int
    a: int
    b: int
    gx: int
    gy: int
    n: int

    @property
    def half_n(self) -> int:
        return self.n // 2


# Domain parameters: secp256k1 from SEC 2 v2 section 2.4.1, P-256 from FIPS 186-5 / SEC 2
# section 2.4.2 (secp256r1).  tests/crypto checks them against OpenSSL's.
SECP256K1 = Curve(
    "secp256k1",
    p=0xFFFFFFFF_FFFFFFFF_FFFFFFFF_FFFFFFFF_FFFFFFFF_FFFFFFFF_FFFFFFFE_FFFFFC2F,
    a=0,
    b=7,
    gx=0x79BE667E_F9DCBBAC_55A06295_CE870B07_029BFCDB_2DCE28D9_59F2815B_16F81798,
    gy=0x483ADA77_26A3C465_5DA4FBFC_0E1108A8_FD17B448_A6855419_9C47D08F_FB10D4B8,
    n=0xFFFFFFFF_FFFFFFFF_FFFFFFFF_FFFFFFFE_BAAEDCE6_AF48A03B_BFD25E8C_D0364141,
)
P256 = Curve(
    "P-256",
    p=0xFFFFFFFF_00000001_00000000_00000000_00000000_FFFFFFFF_FFFFFFFF_FFFFFFFF,
    a=0xFFFFFFFF_00000001_00000000_00000000_00000000_FFFFFFFF_FFFFFFFF_FFFFFFFC,
    b=0x5AC635D8_AA3A93E7_B3EBBD55_769886BC_651D06B0_CC53B0F6_3BCE3C3E_27D2604B,
    gx=0x6B17D1F2_E12C4247_F8BCE6E5_63A440F2_77037D81_2DEB33A0_F4A13945_D898C296,
    gy=0x4FE342E2_FE1A7F9B_8EE7EB4A_7C0F9E16_2BCE3357_6B315ECE_CBB64068_37BF51F5,
    n=0xFFFFFFFF_00000000_FFFFFFFF_FFFFFFFF_BCE6FAAD_A7179E84_F3B9CAC2_FC632551,
)
CURVES: dict[str, Curve] = {"ECDSA-secp256k1": SECP256K1, "ECDSA-P256": P256}


# --- encodings -------------------------------------------------------------------------


def split(signature: bytes) -> tuple[int, int]:
    """(r, s) of a DER Ecdsa-Sig-Value; ValueError if it is not one."""
    return decode_dss_signature(bytes(signature))


def to_der(r: int, s: int) -> bytes:
    return encode_dss_signature(r, s)


def to_raw(r: int, s: int) -> bytes:
    """IEEE P1363 r || s, each a 32-byte big-endian integer."""
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def from_raw(signature: bytes) -> tuple[int, int]:
    signature = bytes(signature)
    if len(signature) != RAW_LEN:
        raise InvalidInputError("signature", f"a raw r||s signature is {RAW_LEN} bytes, "
                                f"got {len(signature)}")
    return int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")


def low_s(curve: Curve, s: int) -> int:
    """s if s <= n/2, else n - s: the other valid signature for the same r."""
    return curve.n - s if s > curve.half_n else s


# --- point arithmetic over public values (Jacobian coordinates) ----------------------

_Point = tuple[int, int, int]  # (X, Y, Z); Z == 0 is the point at infinity
_INFINITY: _Point = (1, 1, 0)


def _double(c: Curve, pt: _Point) -> _Point:
    x, y, z = pt
    if z == 0 or y == 0:
        return _INFINITY
    p = c.p
    yy = y * y % p
    s = 4 * x * yy % p
    zz = z * z % p
    m = (3 * x * x + c.a * zz * zz) % p
    x3 = (m * m - 2 * s) % p
    y3 = (m * (s - x3) - 8 * yy * yy) % p
    return x3, y3, 2 * y * z % p


def _add(c: Curve, p1: _Point, p2: _Point) -> _Point:
    if p1[2] == 0:
        return p2
    if p2[2] == 0:
        return p1
    p = c.p
    x1, y1, z1 = p1
    x2, y2, z2 = p2
    z1z1, z2z2 = z1 * z1 % p, z2 * z2 % p
    u1, u2 = x1 * z2z2 % p, x2 * z1z1 % p
    s1, s2 = y1 * z2 * z2z2 % p, y2 * z1 * z1z1 % p
    if u1 == u2:
        return _double(c, p1) if s1 == s2 else _INFINITY
    h, r = (u2 - u1) % p, (s2 - s1) % p
    hh = h * h % p
    hhh = h * hh % p
    v = u1 * hh % p
    x3 = (r * r - hhh - 2 * v) % p
    y3 = (r * (v - x3) - s1 * hhh) % p
    return x3, y3, h * z1 * z2 % p


def _combine(c: Curve, k1: int, p1: _Point, k2: int, p2: _Point) -> _Point:
    """k1*P1 + k2*P2 in one pass over the bits (Shamir's trick)."""
    both = _add(c, p1, p2)
    acc = _INFINITY
    for i in range(max(k1.bit_length(), k2.bit_length()) - 1, -1, -1):
        acc = _double(c, acc)
        bits = (k1 >> i & 1, k2 >> i & 1)
        if bits == (1, 1):
            acc = _add(c, acc, both)
        elif bits == (1, 0):
            acc = _add(c, acc, p1)
        elif bits == (0, 1):
            acc = _add(c, acc, p2)
    return acc


def _affine(c: Curve, pt: _Point) -> tuple[int, int] | None:
    x, y, z = pt
    if z == 0:
        return None
    zinv = pow(z, -1, c.p)
    zinv2 = zinv * zinv % c.p
    return x * zinv2 % c.p, y * zinv2 * zinv % c.p


def _lift_x(c: Curve, x: int, odd: bool) -> tuple[int, int] | None:
    """The point with this x and y parity, or None if x is not on the curve.
    Both curves have p = 3 (mod 4), so a square root is a single power."""
    rhs = (pow(x, 3, c.p) + c.a * x + c.b) % c.p
    y = pow(rhs, (c.p + 1) // 4, c.p)
    if y * y % c.p != rhs:
        return None
    if (y & 1) != odd:
        y = c.p - y
    return x, y


def recover(curve: Curve, digest: bytes, r: int, s: int, recovery_id: int) -> bytes | None:
    """SEC 1 v2 section 4.1.6: the public key (SEC 1 uncompressed, 65 bytes) that (r, s)
    with this recovery id verifies under for ``digest``, or None if there is none."""
    if not (0 < r < curve.n and 0 < s < curve.n and 0 <= recovery_id <= 3):
        return None
    x = r + (recovery_id >> 1) * curve.n
    if x >= curve.p:
        return None
    point = _lift_x(curve, x, bool(recovery_id & 1))
    if point is None:
        return None
    e = int.from_bytes(bytes(digest), "big") % curve.n  # 256-bit n and digest: bits2int is int
    r_inv = pow(r, -1, curve.n)
    u1 = (-e * r_inv) % curve.n
    u2 = (s * r_inv) % curve.n
    q = _affine(curve, _combine(curve, u1, (curve.gx, curve.gy, 1), u2, (*point, 1)))
    if q is None:
        return None
    return b"\x04" + q[0].to_bytes(32, "big") + q[1].to_bytes(32, "big")


def recovery_id(curve: Curve, digest: bytes, r: int, s: int, public_key: bytes) -> int | None:
    """The recovery id that gives back ``public_key`` (SEC 1 uncompressed), or None if no
    candidate does (the signature does not verify under that key)."""
    for candidate in range(4):
        if recover(curve, digest, r, s, candidate) == bytes(public_key):
            return candidate
    return None
