"""Signature options on SIGN and VERIFY, and the finishing every provider's signature gets.

Options (Python API keywords, data-plane fields, CLI flags):

=====================  ================================================================
``signature_format``   ``"der"`` (the default) or ``"raw"`` (r||s, 32+32 bytes; JOSE,
                       WebCrypto).  ECDSA only: other algorithms have one form.  VERIFY
                       takes either form without it; with it, only that form.
``prehashed``          ``data`` is a 32-byte digest, signed (or verified) as given:
                       Ethereum signs Keccak-256 digests.  ECDSA only.
``recovery_id``        also return the recovery id (0 or 1) of the low-S signature, which
                       then defaults to raw.  ECDSA-secp256k1 only.
``low_s``              normalize s to s <= n/2.  Always on for ECDSA-secp256k1 (Bitcoin
                       BIP 146, Ethereum EIP-2); off by default for ECDSA-P256, whose
                       FIPS 186 verifiers accept both.
``rsa_padding``        ``"pss"`` (the default: RSASSA-PSS, SHA-256, salt 32) or
                       ``"pkcs1v15"`` (RSASSA-PKCS1-v1_5 with SHA-256, what X.509's
                       sha256WithRSAEncryption and JWS RS256 are).  RSA only; a PKCS#1
                       v1.5 signature is verified before it is returned.
=====================  ================================================================

Finishing happens here, after the provider signed, so every path (software, envelope,
AWS KMS, Azure Key Vault, Vault transit, an HSM) gives the same forms: AWS KMS and Azure
return high-S signatures half the time, as OpenSSL does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from qkms.crypto import ecdsa
from qkms.errors import InvalidInputError, QkmsError
from qkms.model.algorithms import AlgorithmInfo
from qkms.model.enums import Family, Operation

FORMATS = ("der", "raw")
RSA_PADDINGS = ("pss", "pkcs1v15")
RECOVERABLE = "ECDSA-secp256k1"
_ATTEMPTS = 4  # a recovery id of 2 or 3 (r >= n, about 2^-128 likely) asks for a new nonce


class SignatureMismatchError(QkmsError):
    """The provider's signature does not verify under the key's public key."""

    code = "provider_signature_invalid"


@dataclass(frozen=True)
class SignOptions:
    signature_format: str | None = None
    prehashed: bool = False
    recovery_id: bool = False
    low_s: bool | None = None
    rsa_padding: str | None = None

    @classmethod
    def parse(cls, signature_format: Any = None, prehashed: Any = False,
              recovery_id: Any = False, low_s: Any = None,
              rsa_padding: Any = None) -> SignOptions:
        """Types and values only; ``check`` decides against the key's algorithm."""
        if (signature_format is None and prehashed is False and recovery_id is False
                and low_s is None and rsa_padding is None):
            return NO_OPTIONS  # the usual call: nothing to parse
        fmt = None
        if signature_format is not None:
            if not isinstance(signature_format, str) or \
                    signature_format.strip().lower() not in FORMATS:
                raise InvalidInputError("signature_format", f"{signature_format!r} is not one "
                                        f"of {', '.join(FORMATS)}")
            fmt = signature_format.strip().lower()
        for name, value in (("prehashed", prehashed), ("recovery_id", recovery_id)):
            if not isinstance(value, bool):
                raise InvalidInputError(name, "must be true or false")
        if low_s is not None and not isinstance(low_s, bool):
            raise InvalidInputError("low_s", "must be true or false")
        padding = None
        if rsa_padding is not None:
            if not isinstance(rsa_padding, str) or \
                    rsa_padding.strip().lower() not in RSA_PADDINGS:
                raise InvalidInputError("rsa_padding", f"{rsa_padding!r} is not one of "
                                        f"{', '.join(RSA_PADDINGS)}")
            padding = rsa_padding.strip().lower()
        return cls(fmt, prehashed, recovery_id, low_s, padding)

    @property
    def pkcs1v15(self) -> bool:
        return self.rsa_padding == "pkcs1v15"

    @property
    def given(self) -> bool:
        return self is not NO_OPTIONS and self != NO_OPTIONS

    def check(self, info: AlgorithmInfo, operation: Operation) -> None:
        """Refuse what the algorithm or the operation cannot honour, naming the option."""
        if not self.given:
            return
        if operation not in (Operation.SIGN, Operation.VERIFY):
            first = next(n for n in ("signature_format", "prehashed", "recovery_id", "low_s",
                                     "rsa_padding") if getattr(self, n) not in (None, False))
            raise InvalidInputError(first, f"applies to SIGN and VERIFY, not {operation.value}")
        ecdsa_key = info.name in ecdsa.CURVES
        if operation is Operation.VERIFY:
            for name in ("recovery_id", "low_s"):
                if getattr(self, name) not in (None, False):
                    raise InvalidInputError(name, "applies to SIGN only; VERIFY accepts "
                                            "high-S and low-S signatures alike")
        if self.signature_format is not None and not ecdsa_key:
            raise InvalidInputError("signature_format", f"{info.name} signatures have one form; "
                                    "der and raw apply to ECDSA only")
        if self.prehashed and not ecdsa_key:
            raise InvalidInputError("prehashed", f"{info.name} signs the message itself, not a "
                                    "digest; prehashed applies to ECDSA only")
        if self.recovery_id and info.name != RECOVERABLE:
            raise InvalidInputError("recovery_id", f"only {RECOVERABLE} signatures carry a "
                                    f"recovery id, not {info.name}")
        if self.low_s is not None and not ecdsa_key:
            raise InvalidInputError("low_s", f"applies to ECDSA only, not {info.name}")
        if self.low_s is False and info.name == RECOVERABLE:
            raise InvalidInputError("low_s", f"{RECOVERABLE} signatures are always low-S")
        if self.rsa_padding is not None and info.family is not Family.RSA:
            raise InvalidInputError("rsa_padding", f"applies to RSA only, not {info.name}")

    def check_digest(self, data: bytes, field: str = "data") -> None:
        if self.prehashed and len(data) != ecdsa.DIGEST_LEN:
            raise InvalidInputError(field, f"with prehashed, must be a {ecdsa.DIGEST_LEN}-byte "
                                    f"digest, got {len(data)} bytes")


NO_OPTIONS = SignOptions()


@dataclass(frozen=True)
class Signed:
    signature: bytes
    recovery_id: int | None = None


def _mismatch(handle: Any, provider: Any) -> SignatureMismatchError:
    return SignatureMismatchError(
        f"{handle.key_id}: the signature {getattr(provider, 'type', 'the provider')} returned "
        "does not verify under the key's public key; it is not returned")


async def sign(provider: Any, handle: Any, info: AlgorithmInfo, data: bytes,
               options: SignOptions, public: Any) -> Signed:
    """Sign through the provider, then normalize and encode as the options say.

    A prehashed signature is verified before it is returned: providers differ in how they
    take a digest (AWS KMS's MessageType DIGEST, which moto ignores and hashes again),
    and a signature over the wrong digest must fail here, not in a wallet."""
    if options is NO_OPTIONS and info.name not in ecdsa.CURVES:
        return Signed(await provider.sign(handle, data))  # one form, nothing to finish
    options.check_digest(data)
    for _ in range(_ATTEMPTS):
        if options.prehashed:
            der = await provider.sign(handle, data, prehashed=True)
        elif options.pkcs1v15:
            der = await provider.sign(handle, data, pkcs1v15=True)
            if not public.verify_with(data, der, pkcs1v15=True):
                raise _mismatch(handle, provider)
        else:
            der = await provider.sign(handle, data)
        curve = ecdsa.CURVES.get(info.name)
        if curve is None:
            return Signed(der)
        r, s = ecdsa.split(der)
        if options.prehashed and not options.recovery_id and \
                not public.verify_with(data, der, prehashed=True):
            raise _mismatch(handle, provider)
        if info.name == RECOVERABLE or options.low_s:
            s = ecdsa.low_s(curve, s)
        recovery = None
        if options.recovery_id:
            digest = data if options.prehashed else hashlib.sha256(data).digest()
            recovery = ecdsa.recovery_id(curve, digest, r, s, public.raw())
            if recovery is None:
                raise _mismatch(handle, provider)
            if recovery > 1:
                continue
        fmt = options.signature_format or ("raw" if options.recovery_id else "der")
        return Signed(ecdsa.to_raw(r, s) if fmt == "raw" else ecdsa.to_der(r, s), recovery)
    raise SignatureMismatchError(f"{handle.key_id}: no signature with a recovery id of 0 or 1 "
                                 f"in {_ATTEMPTS} attempts")


async def sign_many(provider: Any, handle: Any, info: AlgorithmInfo,
                    messages: list[bytes]) -> list[bytes]:
    """What ``sign`` with no options gives for each message, signed in one provider call:
    ECDSA re-encoded as DER, low-S on secp256k1."""
    signatures = await provider.sign_many(handle, messages)
    curve = ecdsa.CURVES.get(info.name)
    if curve is None:
        return list(signatures)
    out = []
    for der in signatures:
        r, s = ecdsa.split(der)
        out.append(ecdsa.to_der(r, ecdsa.low_s(curve, s) if info.name == RECOVERABLE else s))
    return out


def verify(public: Any, data: bytes, signature: bytes, options: SignOptions) -> bool:
    """VERIFY with the options given (``check`` and ``check_digest`` already passed)."""
    if options.rsa_padding is not None:
        return bool(public.verify_with(data, signature, pkcs1v15=options.pkcs1v15))
    return bool(public.verify_with(data, signature, prehashed=options.prehashed,
                                   signature_format=options.signature_format))
