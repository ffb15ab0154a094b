"""The algorithm registry: canonical names, aliases, usages and provenance.

One table decides which names are accepted, which usages an algorithm may
serve, and which operations follow; the README's algorithm table and the
CRD enums are generated from it, so they cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass

from qkms.errors import OperationNotAllowedError, UnsupportedAlgorithmError

from .enums import FAMILY_OPERATIONS, USAGE_OPERATIONS, Family, Operation, Usage

_SIGN_USAGES = frozenset({Usage.SIGNING, Usage.AUTHENTICATION})
_CIPHER_USAGES = frozenset({Usage.ENCRYPTION, Usage.TRANSPORT})


@dataclass(frozen=True)
class AlgorithmInfo:
    name: str
    family: Family
    usages: frozenset[Usage]
    aliases: tuple[str, ...] = ()
    post_quantum: bool = False
    hybrid: bool = False
    symmetric: bool = False
    library: str = "cryptography"
    standard: str = ""

    @property
    def quantum_vulnerable(self) -> bool:
        """Asymmetric and classical only: what a quantum computer would break."""
        return not (self.post_quantum or self.hybrid or self.symmetric)

    def operations(self, usage: Usage) -> frozenset[Operation]:
        return FAMILY_OPERATIONS[self.family] & USAGE_OPERATIONS[usage]


def _alg(name: str, family: Family, usages: frozenset[Usage], **kw: object) -> AlgorithmInfo:
    return AlgorithmInfo(name=name, family=family, usages=usages, **kw)  # type: ignore[arg-type]


ALGORITHMS: tuple[AlgorithmInfo, ...] = (
    _alg("Ed25519", Family.SIGNATURE, _SIGN_USAGES, standard="RFC 8032"),
    _alg("ECDSA-secp256k1", Family.SIGNATURE, _SIGN_USAGES,
         aliases=("secp256k1", "ECDSA-P256K1", "ES256K"), standard="SEC 2, SHA-256, DER"),
    _alg("ECDSA-P256", Family.SIGNATURE, _SIGN_USAGES,
         aliases=("P-256", "ES256", "secp256r1", "ECDSA-secp256r1"), standard="FIPS 186-5"),
    _alg("RSA-2048", Family.RSA, _SIGN_USAGES | _CIPHER_USAGES, aliases=("RSA2048",),
         standard="RFC 8017 (PSS-SHA256 / OAEP-SHA256)"),
    _alg("RSA-4096", Family.RSA, _SIGN_USAGES | _CIPHER_USAGES, aliases=("RSA4096",),
         standard="RFC 8017 (PSS-SHA256 / OAEP-SHA256)"),
    _alg("AES-256-GCM", Family.AEAD, _CIPHER_USAGES, aliases=("AES256-GCM", "aes256-gcm96"),
         symmetric=True, standard="NIST SP 800-38D"),
    _alg("ChaCha20-Poly1305", Family.AEAD, _CIPHER_USAGES, aliases=("ChaCha20Poly1305",),
         symmetric=True, standard="RFC 8439"),
    _alg("HKDF-SHA256", Family.KDF, frozenset({Usage.KEY_DERIVATION}), aliases=("HKDF",),
         symmetric=True, standard="RFC 5869"),
    _alg("ML-DSA-44", Family.SIGNATURE, _SIGN_USAGES, aliases=("Dilithium2", "MLDSA44"),
         post_quantum=True, standard="FIPS 204"),
    _alg("ML-DSA-65", Family.SIGNATURE, _SIGN_USAGES, aliases=("Dilithium3", "MLDSA65"),
         post_quantum=True, standard="FIPS 204"),
    _alg("ML-DSA-87", Family.SIGNATURE, _SIGN_USAGES, aliases=("Dilithium5", "MLDSA87"),
         post_quantum=True, standard="FIPS 204"),
    _alg("Falcon-512", Family.SIGNATURE, _SIGN_USAGES, aliases=("Falcon512",),
         post_quantum=True, library="pqcrypto (PQClean)",
         standard="Falcon round 3 (FIPS 206 not final)"),
    _alg("Falcon-1024", Family.SIGNATURE, _SIGN_USAGES, aliases=("Falcon1024",),
         post_quantum=True, library="pqcrypto (PQClean)",
         standard="Falcon round 3 (FIPS 206 not final)"),
    _alg("ML-KEM-512", Family.KEM, _CIPHER_USAGES, aliases=("Kyber512", "MLKEM512"),
         post_quantum=True, library="pqcrypto (PQClean)", standard="FIPS 203"),
    _alg("ML-KEM-768", Family.KEM, _CIPHER_USAGES, aliases=("Kyber768", "MLKEM768"),
         post_quantum=True, standard="FIPS 203"),
    _alg("ML-KEM-1024", Family.KEM, _CIPHER_USAGES, aliases=("Kyber1024", "MLKEM1024"),
         post_quantum=True, standard="FIPS 203"),
    _alg("Ed25519+ML-DSA-65", Family.SIGNATURE, _SIGN_USAGES,
         aliases=("ML-DSA-65+Ed25519", "MLDSA65-Ed25519", "id-MLDSA65-Ed25519-SHA512"),
         hybrid=True, standard="IETF LAMPS composite ML-DSA draft"),
    _alg("X-Wing", Family.KEM, _CIPHER_USAGES,
         aliases=("X25519+ML-KEM-768", "XWing", "X25519-ML-KEM-768"),
         hybrid=True, standard="CFRG X-Wing draft (X25519 + ML-KEM-768)"),
)

_BY_NAME: dict[str, AlgorithmInfo] = {}
for _info in ALGORITHMS:
    for _n in (_info.name, *_info.aliases):
        _BY_NAME[_n.casefold()] = _info


def resolve_algorithm(name: str, field: str = "algorithm") -> AlgorithmInfo:
    """Find an algorithm by canonical name or alias, case-insensitively."""
    info = _BY_NAME.get(str(name).strip().casefold())
    if info is None:
        known = ", ".join(a.name for a in ALGORITHMS)
        raise UnsupportedAlgorithmError(field, f"unknown algorithm {name!r}; supported: {known}")
    return info


def check_usage(info: AlgorithmInfo, usage: Usage) -> None:
    """Refuse an algorithm that cannot serve the usage, naming both."""
    if usage not in info.usages:
        allowed = ", ".join(sorted(u.value for u in info.usages))
        raise UnsupportedAlgorithmError(
            "algorithm", f"{info.name} cannot serve usage {usage.value}; it serves {allowed}"
        )


def check_operation(info: AlgorithmInfo, usage: Usage, operation: Operation) -> None:
    if operation not in info.operations(usage):
        allowed = ", ".join(sorted(o.value for o in info.operations(usage)))
        raise OperationNotAllowedError(
            f"Operation {operation.value} not allowed for usage {usage.value} "
            f"with {info.name}; allowed: {allowed}"
        )


def algorithms_for_usage(usage: Usage) -> list[AlgorithmInfo]:
    return [a for a in ALGORITHMS if usage in a.usages]
