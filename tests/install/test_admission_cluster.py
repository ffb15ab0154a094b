"""The ValidatingAdmissionPolicy of manifests/, enforced by the real API server.

manifests/ is applied with kubectl (server-side) to a control plane of the test's own; then
requests are made with a real TokenRequest token of the operator's ServiceAccount
(qkms-system/qkms), which RBAC allows to create and update Secrets in every namespace. The
policy refuses what RBAC cannot express: ServiceAccount token Secrets anywhere, and Secrets
without qkms's label outside qkms-system. What the operator does write (labelled
projections, its records in its own namespace) and what anyone else does pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.install.helpers import NAMESPACE
from tests.install.pods import APP_NS, kubectl_ok, workload_control_plane
from tests.support.kubeclient import KubeClient, KubeError, eventually

PROJECTION = {"app.kubernetes.io/managed-by": "qkms", "qkms.io/managed-key": "signer"}


def secret(name: str, namespace: str, labels: dict[str, str] | None = None,
           type_: str = "Opaque", annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels or {}}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Secret", "type": type_, "metadata": meta,
            "data": {}}


async def outcome(client: KubeClient, body: dict[str, Any]) -> str:
    """'created', or the refusal's HTTP status and message."""
    try:
        await client.create("secrets", body, body["metadata"]["namespace"])
    except KubeError as exc:
        return f"{exc.status} {exc}"
    return "created"


async def test_operator_service_account_cannot_mint_tokens_or_write_unlabelled_secrets(
        tmp_path: Path) -> None:
    async with workload_control_plane(tmp_path / "cp") as cp:
        admin = cp.client
        kubectl_ok(cp, "apply", "--server-side", "-f", "crds/", "-f", "manifests/")
        await admin.create("namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                          "metadata": {"name": APP_NS}})
        operator = cp.as_token(await cp.token(NAMESPACE, "qkms"))
        token_secret = secret("minted", APP_NS, PROJECTION, "kubernetes.io/service-account-token",
                              {"kubernetes.io/service-account.name": "default"})
        try:
            # The policy is enforced once the API server has loaded it.
            refused = await eventually(
                lambda: _refused(operator, token_secret), timeout=30,
                what="the ServiceAccount token Secret refused")
            assert "may not write ServiceAccount token Secrets" in refused, refused
            own = secret("minted", NAMESPACE, type_="kubernetes.io/service-account-token",
                         annotations={"kubernetes.io/service-account.name": "qkms"})
            assert "may not write ServiceAccount token" in await outcome(operator, own)

            unlabelled = await outcome(operator, secret("plain", APP_NS))
            assert unlabelled.startswith(("403", "422")) and \
                "writes only Secrets labelled" in unlabelled, unlabelled
            assert await outcome(operator, secret("signer-public", APP_NS, PROJECTION)) == \
                "created"
            # An update that drops the label is refused too.
            body = await admin.get("secrets", "signer-public", APP_NS)
            body["metadata"]["labels"] = {}
            try:
                await operator.replace("secrets", body, APP_NS)
                raise AssertionError("the label was dropped by an update")
            except KubeError as exc:
                assert "writes only Secrets labelled" in str(exc)
            # Its own namespace holds its records (labelled anyway) and keys: allowed.
            assert await outcome(operator, secret("qkms-rec-test", NAMESPACE)) == "created"
            # Only the operator is bound by it: an admin writes what it likes.
            assert await outcome(admin, secret("plain", APP_NS)) == "created"
        finally:
            await operator.close()


async def _refused(client: KubeClient, body: dict[str, Any]) -> str | None:
    result = await outcome(client, body)
    if result == "created":  # not enforced yet: take it back and try again
        await client.delete("secrets", body["metadata"]["name"], body["metadata"]["namespace"])
        return None
    return result
