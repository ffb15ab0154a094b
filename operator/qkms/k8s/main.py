"""``qkms operator``: run Kopf with the qkms handlers.

Cluster-wide by default, with peering named ``qkms`` so that of several
replicas exactly one reconciles at a time (the others keep serving the data
plane).  Kopf pauses *every* peer when priorities tie, so each replica takes a
random priority (``QKMS_PEERING_PRIORITY`` overrides): the highest reconciles,
and when it dies its peering record expires and the next one takes over.
``--standalone`` skips peering, for a single replica or tests.
"""

from __future__ import annotations

import secrets
from dataclasses import replace

import kopf

from qkms.config import OperatorConfig
from qkms.model.names import PEERING


def peering_priority(config: OperatorConfig) -> int:
    if config.peering_priority is not None:
        return config.peering_priority
    return 1 + secrets.randbelow(1_000_000)


async def run_operator(*, standalone: bool, namespaces: list[str],
                       liveness: str | None) -> None:
    """Cluster-wide, or only `namespaces` (``--namespace``, else ``QKMS_WATCH_NAMESPACES``:
    the chart's watchNamespaces, where alone its Roles grant access). Either way one
    ClusterKopfPeering elects the reconciler (see handlers.startup), which finds the
    config, with those namespaces, on Kopf's memo."""
    from qkms.k8s import handlers  # noqa: F401 - registers the handlers

    config = OperatorConfig.from_env()
    if namespaces:  # the runtime lists keys there alone
        config = replace(config, watch_namespaces=tuple(namespaces))
    namespaces = list(config.watch_namespaces)

    await kopf.operator(
        standalone=standalone,
        priority=peering_priority(config),
        peering_name=None if standalone else PEERING,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness or None,
        memo=kopf.Memo(config=config),
    )
