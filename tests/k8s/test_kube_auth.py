"""The data plane's in-cluster authentication and authorization (``k8s/auth.py: KubeAuth``)
against the real kube-apiserver, with real tokens and real RBAC.

Callers present TokenRequest tokens bound to the audience ``qkms``; the reviews are made
with the operator's own ServiceAccount (its shipped RBAC), and authorization is whatever
the server's RBAC says: Roles, RoleBindings, a Group subject, an aggregated ClusterRole.
The expired token is minted with the test cluster's ServiceAccount signing key, so it is
a genuine token the server itself judges expired.
"""

from __future__ import annotations

import base64
import json
import shutil
import time
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from kubernetes import config

from qkms.config import Settings
from qkms.k8s.auth import KubeAuth
from qkms.server.app import start_data_plane
from qkms.standalone import Standalone
from tests.support.controlplane import ISSUER, ControlPlane
from tests.support.kubeclient import eventually
from tests.support.server_process import free_port

ROOT = Path(__file__).resolve().parents[2]
SIGN = "/v1/keys/payments/user-service-signing:sign"
AUDIENCE = "qkms"
RBAC = "rbac.authorization.k8s.io/v1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def expired_token(cp: ControlPlane, namespace: str, name: str, uid: str) -> str:
    """A ServiceAccount JWT, signed by the cluster's key, that expired a minute ago."""
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": [AUDIENCE], "sub": f"system:serviceaccount:{namespace}:{name}",
              "iat": now - 7200, "nbf": now - 7200, "exp": now - 60,
              "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name,
                                                                           "uid": uid}}}
    header = {"alg": "RS256", "typ": "JWT"}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    key = serialization.load_pem_private_key(cp.pki.sa_key_path.read_bytes(), None)
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64(signature)}"


async def role_binding(kube, namespace: str, name: str, role: tuple[str, str],
                       subject: dict) -> None:
    await kube.create("rolebindings", {
        "apiVersion": RBAC, "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role[0], "name": role[1]},
        "subjects": [subject]}, namespace)


def service_account(namespace: str, name: str) -> dict:
    return {"kind": "ServiceAccount", "name": name, "namespace": namespace}


@pytest.fixture
async def tokens(kube, control_plane: ControlPlane) -> dict[str, str]:
    for name, env in (("payments", "dev"), ("billing", "dev"), ("team-b", "dev"),
                      ("checkout-prod", "prod")):
        await kube.create("namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                         "metadata": {"name": name,
                                                      "labels": {"qkms.io/environment": env}}})
    await kube.create("roles", {"apiVersion": RBAC, "kind": "Role",
                                "metadata": {"name": "signer", "namespace": "payments"},
                                "rules": [{"apiGroups": ["qkms.io"], "resources": ["managedkeys"],
                                           "verbs": ["sign", "verify"]}]}, "payments")
    for ns, name in (("payments", "checkout"), ("checkout-prod", "app")):
        await role_binding(kube, "payments", f"{ns}-{name}-signs", ("Role", "signer"),
                           service_account(ns, name))
    # Every ServiceAccount of team-b, as a Group subject.
    await role_binding(kube, "payments", "team-b-signs", ("Role", "signer"),
                       {"kind": "Group", "name": "system:serviceaccounts:team-b",
                        "apiGroup": "rbac.authorization.k8s.io"})
    # An aggregated ClusterRole: its rules come from ClusterRoles labelled to join it,
    # filled in by the controller-manager's clusterrole-aggregation controller.
    label = {"qkms.io/aggregate-to-key-user": "true"}
    await kube.create("clusterroles", {
        "apiVersion": RBAC, "kind": "ClusterRole", "metadata": {"name": "qkms-test-key-user"},
        "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": label}]}, "rules": []})
    await kube.create("clusterroles", {
        "apiVersion": RBAC, "kind": "ClusterRole",
        "metadata": {"name": "qkms-test-key-signer", "labels": label},
        "rules": [{"apiGroups": ["qkms.io"], "resources": ["managedkeys"], "verbs": ["sign"]}]})
    await role_binding(kube, "payments", "aggregated-signs", ("ClusterRole", "qkms-test-key-user"),
                       service_account("payments", "aggregated"))

    async def aggregated() -> bool:
        role = await kube.get("clusterroles", "qkms-test-key-user")
        return bool(role and role.get("rules"))
    await eventually(aggregated, timeout=30, what="the ClusterRole aggregated")

    found = {}
    for ns, name in (("payments", "checkout"), ("payments", "reader"), ("billing", "app"),
                     ("checkout-prod", "app"), ("team-b", "worker"),
                     ("payments", "aggregated")):
        found[f"{ns}/{name}"] = await control_plane.token(ns, name, audiences=[AUDIENCE])
    found["wrong-audience"] = await control_plane.token("payments", "checkout")
    account = await kube.get("serviceaccounts", "checkout", "payments")
    if control_plane.pki.sa_key_path is not None:  # only a cluster the tests made
        found["expired"] = expired_token(control_plane, "payments", "checkout",
                                         account["metadata"]["uid"])
    yield found
    for name in ("qkms-test-key-user", "qkms-test-key-signer"):
        await kube.delete("clusterroles", name)


@pytest.fixture
async def plane(tokens, operator_kubeconfig, tmp_path):
    folder = tmp_path / "manifests"
    shutil.copytree(ROOT / "examples", folder)
    # Standalone mode knows a namespace's environment only from a Namespace manifest.
    (folder / "callers.yaml").write_text("".join(
        f"---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n"
        f"  labels: {{qkms.io/environment: {env}}}\n"
        for name, env in (("billing", "dev"), ("team-b", "dev"), ("checkout-prod", "prod"))))
    standalone = Standalone(Settings(data_dir=tmp_path / "data"), folder, tmp_path / "out",
                            say=lambda line: None)
    standalone.refresh()
    await standalone.reconcile_all()
    # The reviews are made as the operator's ServiceAccount, with the RBAC it ships.
    auth = KubeAuth(config.new_client_from_config(str(operator_kubeconfig)), ttl=10,
                    audiences=[AUDIENCE])
    port = free_port()
    runner = await start_data_plane(standalone, standalone.registry, auth, auth,
                                    f"127.0.0.1:{port}")
    try:
        yield f"http://127.0.0.1:{port}", standalone, tokens
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("caller,status", [
    (None, 401),
    ("not-a-token", 401),
    ("expired", 401),                    # signed by the cluster, but past its exp
    ("wrong-audience", 401),             # a real token for the API server, not for qkms
    ("payments/reader", 403),            # a real ServiceAccount without RBAC
    ("billing/app", 403),                # another namespace
    ("checkout-prod/app", 403),          # bound by RBAC, but another environment
    ("payments/checkout", 200),          # a RoleBinding to a Role
    ("team-b/worker", 200),              # a Group subject
    ("payments/aggregated", 200),        # an aggregated ClusterRole
])
async def test_real_tokens_and_rbac_decide(plane, caller, status) -> None:
    url, standalone, tokens = plane
    if caller == "expired" and caller not in tokens:
        pytest.skip("an external cluster's ServiceAccount signing key is not the tests' own")
    seen = []
    standalone.registry.all()[0].on("auditEvent", seen.append)
    token = tokens.get(caller, caller)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session:
        for _ in range(2):  # the second answer comes from the review cache
            async with session.post(url + SIGN, json={"input": "aGk="}, headers=headers) as rsp:
                assert rsp.status == status, await rsp.text()
    assert {e.result for e in seen} == {"success" if status == 200 else "denied"}
