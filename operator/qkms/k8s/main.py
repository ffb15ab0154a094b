"""``qkms operator``: run Kopf with the qkms handlers.

Cluster-wide by default, with peering named ``qkms`` so that of several
replicas exactly one reconciles at a time (the others keep serving the data
plane).  ``--standalone`` skips peering, for a single replica or tests.
"""

from __future__ import annotations

import kopf

PEERING = "qkms"


async def run_operator(*, standalone: bool, namespaces: list[str],
                       liveness: str | None) -> None:
    from qkms.k8s import handlers  # noqa: F401 - registers the handlers

    await kopf.operator(
        standalone=standalone,
        peering_name=None if standalone else PEERING,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness or None,
    )
