"""What the operator asks of the real API server, read from the server's own audit log.

manifests/ is applied to a control plane with the workload controllers; the StatefulSet's
first pod runs the real operator (tests/install/pods.py) with the ServiceAccount and RBAC
of manifests/, and is put through a key's life: creation with projections, drift repair,
data-plane use (TokenReview, SubjectAccessReview), emergency rotation, revocation, deletion
through the finalizer, a KeyPolicy. Meanwhile the cluster holds Secrets and ConfigMaps
qkms has nothing to do with.

- Every list and watch of Secrets and ConfigMaps carries qkms's label selector (the API
  server filters; the operator never receives other Secrets), and every list is paged.
- Every request the operator made is granted (no 403), and everything granted was used in
  this run or is listed in UNEXERCISED with the code path that needs it.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from qkms.k8s.projections import PROJECTED_SELECTOR
from tests.install.helpers import NAMESPACE, ROOT, find, manifest_objects
from tests.install.pods import (
    APP_NS,
    OPERATOR_USER,
    SELECTOR,
    LocalPod,
    audit_log,
    key_user,
    kubectl_ok,
    pods_of,
    ready_key,
    requests_made,
    workload_control_plane,
)
from tests.support.kubeclient import eventually

# Granted, needed, but not reached by the run below: each with what needs it.
UNEXERCISED: dict[tuple[str, str, str], str] = {
    # OwnerReferencesPermissionEnforcement checks it on projections with
    # blockOwnerDeletion; no request is made with this verb.
    ("qkms.io", "managedkeys/finalizers", "update"): "projections' blockOwnerDeletion",
    ("", "secrets", "delete"): "a key version's sealed record destroyed after its window",
}
# Resources whose handlers this run does not drive at all (each has its own test); their
# requests are still checked (granted, paged), their grants are not checked for use here.
# The cert-manager issuer: tests/k8s/test_cert_manager_issuer.py.
UNDRIVEN = {("qkms.io", "keyissuers"), ("qkms.io", "clusterkeyissuers"),
            ("cert-manager.io", "certificaterequests")}


def granted() -> set[tuple[str, str, str]]:
    rules = find(manifest_objects(), "ClusterRole", "qkms")["rules"]
    return {(g, r, v) for rule in rules for g in rule["apiGroups"]
            for r in rule["resources"] for v in rule["verbs"]}


def query(event: dict[str, Any]) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(event["requestURI"]).query))


async def test_operator_requests_are_selective_paged_and_exactly_granted(tmp_path: Path):
    async with workload_control_plane(tmp_path / "cp", audit_users=(OPERATOR_USER,)) as cp:
        kube = cp.client
        kubectl_ok(cp, "apply", "--server-side", "-f", "crds/", "-f", "manifests/")
        await kube.create("namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                         "metadata": {"name": "elsewhere"}})
        for index in range(20):  # what the operator must never be sent
            meta = {"name": f"unrelated-{index}", "namespace": "elsewhere"}
            await kube.create("secrets", {"apiVersion": "v1", "kind": "Secret",
                                          "metadata": meta, "data": {}}, "elsewhere")
            await kube.create("configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                                             "metadata": meta, "data": {}}, "elsewhere")
        await kube.create("namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                         "metadata": {"name": APP_NS,
                                                      "labels": {"qkms.io/environment": "dev"}}})
        await kube.create("keypolicies", yaml.safe_load(
            (ROOT / "examples" / "keypolicy-dev.yaml").read_text()))
        await kube.create("managedkeys", {
            "apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
            "metadata": {"name": "signer", "namespace": APP_NS},
            "spec": {"usage": "SIGNING", "algorithm": "Ed25519", "owner": "checkout",
                     "projection": {"secretName": "signer-public",
                                    "configMapName": "signer-public"}}}, APP_NS)
        token = await key_user(cp)
        (pod, _) = await pods_of(kube, NAMESPACE, SELECTOR, 2)
        replica = LocalPod(cp, pod, tmp_path / "volumes", tmp_path / "pods")
        try:
            await replica.start()
            await ready_key(kube, "signer")
            await kube.delete("secrets", "signer-public", APP_NS)  # drift, repaired
            await eventually(lambda: kube.get("secrets", "signer-public", APP_NS), timeout=30,
                             what="the projection restored")
            async with await replica.client(token) as client:
                await client.use_key(f"{APP_NS}/signer", "SIGN", b"footprint")
            await kube.patch("managedkeys", "signer", {"metadata": {"annotations": {
                "qkms.io/rotate": "COMPROMISE"}}}, APP_NS)

            async def rotated() -> bool:
                body = await kube.get("managedkeys", "signer", APP_NS)
                return len((body.get("status") or {}).get("versions", [])) == 2
            await eventually(rotated, timeout=30, what="the emergency rotation")
            await kube.patch("managedkeys", "signer",
                             {"spec": {"revoked": {"reason": "done"}}}, APP_NS)
            await kube.delete("managedkeys", "signer", APP_NS)
            await eventually(lambda: _gone(kube), timeout=30, what="the finalizer ran")
        finally:
            await replica.stop()
            print(replica.log()[-6000:])

        events = audit_log(cp)
        made = requests_made(events)
        print("\n".join(sorted(map(str, made))))
        refused = [(e["verb"], e["requestURI"]) for e in events
                   if e.get("responseStatus", {}).get("code") == 403]
        assert refused == [], f"the operator was refused: {refused}"
        for event in events:
            ref = event.get("objectRef") or {}
            params = query(event)
            if event["verb"] == "list":
                assert "limit" in params, f"an unpaged list: {event['requestURI']}"
            if ref.get("resource") in ("secrets", "configmaps") and \
                    event["verb"] in ("list", "watch") and ref.get("namespace") != NAMESPACE:
                assert params.get("labelSelector") == PROJECTED_SELECTOR, \
                    f"every {ref['resource']} of the cluster asked for: {event['requestURI']}"
        grants = granted()
        assert made <= grants
        unused = {(g, r, v) for g, r, v in grants - made - set(UNEXERCISED)
                  if (g, r.split("/")[0]) not in UNDRIVEN}
        assert unused == set(), f"granted but never used: {sorted(unused)}"


async def _gone(kube) -> bool:
    return await kube.get("managedkeys", "signer", APP_NS) is None
