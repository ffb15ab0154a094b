"""qkms: a Kubernetes operator that manages cryptographic keys, classical and post-quantum.

``from qkms import KeyManagementService`` is the seed's API.  The import is
lazy so that light modules (``qkms.model``, ``qkms.lifecycle``) load without
the crypto and provider stack.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["KeyManagementService", "OperationResult", "QkmsError", "RotationResult", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "QkmsError":
        from qkms.errors import QkmsError

        return QkmsError
    if name in ("KeyManagementService", "OperationResult", "RotationResult"):
        from qkms import service

        return getattr(service, name)
    raise AttributeError(f"module 'qkms' has no attribute {name!r}")
