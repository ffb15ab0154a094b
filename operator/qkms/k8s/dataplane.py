"""The data plane of an operator replica: every replica serves it; only reconciliation is
single-active. Wired here, at the edge, from the ``OperatorConfig``: the listen address,
the TLS files (or qkms's own CA), and ServiceAccount-token authentication (KubeAuth)."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from qkms.config import OperatorConfig

from .runtime import OperatorRuntime


async def start(runtime: OperatorRuntime, config: OperatorConfig) -> Any:
    """Serve the data plane on ``QKMS_API_LISTEN`` (0.0.0.0:8443; empty: none)."""
    if not config.api_listen:
        return None
    from qkms.server.app import start_data_plane

    from .auth import KubeAuth

    # Tokens must be minted for qkms (a projected ServiceAccount token with this
    # audience): a token for the API server, or for anything else, is refused.
    auth = KubeAuth(runtime.kube.api, ttl=config.auth_cache_seconds,
                    audiences=list(config.audiences))
    tls = await tls_files(runtime, config)
    return await start_data_plane(runtime, runtime.registry, auth, auth, config.api_listen,
                                  tls, metrics_token=config.metrics_token)


async def tls_files(runtime: OperatorRuntime,
                    config: OperatorConfig) -> tuple[Path, Path, Path | None] | None:
    """The data plane's certificate: files (``QKMS_TLS_CERT``/``KEY``, cert-manager's),
    else ``QKMS_TLS=auto`` (the manifests' default: qkms's own CA, qkms/k8s/tls.py).
    Plain HTTP only on loopback (``QKMS_TLS=off``, or unset there: config.py checks)."""
    if config.tls_cert is not None and config.tls_key is not None:
        return config.tls_cert, config.tls_key, config.tls_client_ca
    if config.tls == "off":
        return None
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
    return folder / "tls.crt", folder / "tls.key", config.tls_client_ca
