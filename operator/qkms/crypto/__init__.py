"""Algorithm suites behind one interface: ``suite_for(info)``.

Suites are stateless apart from their registry entry, so one instance per
algorithm is built on first use and shared.  Every registry entry must have
a suite; ``tests/crypto`` enforces it, so adding an algorithm to the
registry without a suite fails the build rather than a request.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

from qkms.errors import UnsupportedAlgorithmError
from qkms.model.algorithms import AlgorithmInfo, resolve_algorithm

from . import classical, hybrid, pqc
from .base import InvalidCiphertext, PrivateKey, PublicKey, Suite, UnsupportedOperation

__all__ = [
    "InvalidCiphertext",
    "PrivateKey",
    "PublicKey",
    "Suite",
    "UnsupportedOperation",
    "suite_for",
    "verify_signature",
]

_FACTORIES: dict[str, Callable[[AlgorithmInfo], Suite]] = {
    **classical.SUITES,
    **pqc.SUITES,
    **hybrid.SUITES,
}


@cache
def _suite(name: str) -> Suite:
    info = resolve_algorithm(name)
    factory = _FACTORIES.get(info.name)
    if factory is None:
        raise UnsupportedAlgorithmError("algorithm", f"{info.name} has no crypto suite")
    return factory(info)


def suite_for(info_or_name: AlgorithmInfo | str) -> Suite:
    """The suite for a registry entry, by entry or by any name or alias it accepts."""
    name = info_or_name.name if isinstance(info_or_name, AlgorithmInfo) else info_or_name
    return _suite(resolve_algorithm(name).name)


def verify_signature(algorithm: str, public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` over ``message`` verifies under the raw ``public_key`` of
    ``algorithm``; False for a malformed key or an unknown algorithm. What the audit trail
    is given to check its checkpoints (``audit.checkpoint.SignatureCheck``)."""
    try:
        return bool(suite_for(algorithm).load_public(public_key).verify(message, signature))
    except Exception:  # a malformed key or an unknown algorithm is just "not valid"
        return False
