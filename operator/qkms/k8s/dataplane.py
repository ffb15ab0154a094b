"""The data plane of an operator replica: every replica serves it; only reconciliation is
single-active. Wired here, at the edge, from the environment: the listen address, the
TLS files (or qkms's own CA), and ServiceAccount-token authentication (KubeAuth)."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

from qkms.config import listens_on_loopback
from qkms.errors import InvalidInputError

from .runtime import OperatorRuntime


async def start(runtime: OperatorRuntime) -> Any:
    """Serve the data plane on ``QKMS_API_LISTEN`` (0.0.0.0:8443; empty: none)."""
    listen = os.environ.get("QKMS_API_LISTEN", "0.0.0.0:8443")  # noqa: S104 - in a pod
    if not listen:
        return None
    from qkms.server.app import start_data_plane
    from qkms.server.auth import KubeAuth

    # Tokens must be minted for qkms (a projected ServiceAccount token with this
    # audience): a token for the API server, or for anything else, is refused.
    audiences = [a.strip() for a in os.environ.get("QKMS_AUDIENCES", "qkms")
                 .split(",") if a.strip()]
    auth = KubeAuth(runtime.kube.api,
                    ttl=float(os.environ.get("QKMS_AUTH_CACHE_SECONDS", "10")),
                    audiences=audiences)
    tls = await tls_files(runtime, listen)
    return await start_data_plane(runtime, runtime.registry, auth, auth, listen, tls)


async def tls_files(runtime: OperatorRuntime,
                    listen: str) -> tuple[Path, Path, Path | None] | None:
    """The data plane's certificate: files (``QKMS_TLS_CERT``/``KEY``, cert-manager's),
    else ``QKMS_TLS=auto`` (the manifests' default: qkms's own CA, qkms/k8s/tls.py).
    Plain HTTP only on loopback (``QKMS_TLS=off``, or unset there)."""
    cert = os.environ.get("QKMS_TLS_CERT")
    client_ca = (Path(os.environ["QKMS_TLS_CLIENT_CA"])
                 if os.environ.get("QKMS_TLS_CLIENT_CA") else None)
    if cert:
        return Path(cert), Path(os.environ["QKMS_TLS_KEY"]), client_ca
    mode = os.environ.get("QKMS_TLS", "").strip().lower() or \
        ("off" if listens_on_loopback(listen) else "auto")
    if mode == "off":
        if not listens_on_loopback(listen):
            raise InvalidInputError("QKMS_TLS", f"plain HTTP only on loopback, not on "
                                                f"{listen}: use auto or certificate files")
        return None
    if mode != "auto":
        raise InvalidInputError("QKMS_TLS", f"{mode!r}: auto or off")
    from . import tls

    files = await asyncio.to_thread(tls.load_or_create_tls, runtime.kube.core,
                                    runtime.namespace)
    runtime.ca_pem = files["ca.crt"]
    await runtime.publish_ca(runtime.namespace)
    folder = Path(tempfile.mkdtemp(prefix="qkms-tls-"))  # 0700, on the pod's /tmp
    for name in ("tls.crt", "tls.key"):
        path = folder / name
        path.touch(mode=0o600)
        path.write_bytes(files[name])
    return folder / "tls.crt", folder / "tls.key", client_ca
