"""The projection controller: a projected Secret or ConfigMap (public material only)
that someone edits or deletes is restored from what the key's last reconcile wrote."""

from __future__ import annotations

from typing import Any

import kopf

from qkms.model.names import KEY_LABEL, MANAGED_BY, MANAGED_BY_LABEL

from .runtime import ProjectionTarget, runtime_of

# A Kopf label filter: values are strings or kopf.PRESENT (Kopf does not export the type).
PROJECTED: dict[str, Any] = {MANAGED_BY_LABEL: MANAGED_BY, KEY_LABEL: kopf.PRESENT}
# The same filter as a server-side label selector: Kopf lists and watches only qkms's
# projections, never every Secret and ConfigMap of the cluster (its labels= filter on a
# handler is applied client-side, after the API has sent everything).
PROJECTED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY},{KEY_LABEL}"
WATCHED_BY_LABEL = (("v1", "secrets"), ("v1", "configmaps"))


@kopf.on.event("", "v1", "secrets", labels=PROJECTED)
@kopf.on.event("", "v1", "configmaps", labels=PROJECTED)
async def repair_projection(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo,
                            **_: Any) -> None:
    meta = body["metadata"]
    if meta.get("deletionTimestamp") and event.get("type") != "DELETED":
        return
    await runtime_of(memo).repair(ProjectionTarget(meta["namespace"], body["kind"], meta["name"]))
