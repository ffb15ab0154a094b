"""The data plane's in-cluster authentication and authorization: TokenReview and
SubjectAccessReview (``server/auth.py: KubeAuth``) against the emulated API server, which
answers reviews from ServiceAccount token Secrets and RBAC objects as Kubernetes does."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import aiohttp
import pytest
from kubernetes import config

from qkms.config import Settings
from qkms.server.app import start_data_plane
from qkms.server.auth import KubeAuth
from qkms.standalone import Standalone
from tests.server.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
SIGN = "/v1/keys/payments/user-service-signing:sign"


async def account(kube, namespace: str, name: str, token: str) -> None:
    await kube.create("secrets", {
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
        "metadata": {"name": f"{name}-token", "namespace": namespace,
                     "annotations": {"kubernetes.io/service-account.name": name}},
        "data": {"token": base64.b64encode(token.encode()).decode()}}, namespace)


@pytest.fixture
async def plane(kube, tmp_path):
    for name, env in (("payments", "dev"), ("billing", "dev"), ("checkout-prod", "prod")):
        await kube.create("namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                         "metadata": {"name": name,
                                                      "labels": {"qkms.io/environment": env}}})
    for ns, name in (("payments", "checkout"), ("payments", "reader"), ("billing", "app"),
                     ("checkout-prod", "app")):
        await account(kube, ns, name, f"tok-{ns}-{name}")
    await kube.create("roles", {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                                "metadata": {"name": "signer", "namespace": "payments"},
                                "rules": [{"apiGroups": ["qkms.io"],
                                           "resources": ["managedkeys"],
                                           "verbs": ["sign", "verify"]}]}, "payments")
    for ns, name in (("payments", "checkout"), ("checkout-prod", "app")):
        await kube.create("rolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": f"{ns}-{name}-signs", "namespace": "payments"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                        "name": "signer"},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}]},
            "payments")
    folder = tmp_path / "manifests"
    shutil.copytree(ROOT / "examples", folder)
    standalone = Standalone(Settings(data_dir=tmp_path / "data"), folder, tmp_path / "out",
                            say=lambda line: None)
    standalone.refresh()
    await standalone.reconcile_all()
    auth = KubeAuth(config.new_client_from_config(str(kube.kubeconfig)), ttl=10)
    port = free_port()
    runner = await start_data_plane(standalone, standalone.registry, auth, auth,
                                    f"127.0.0.1:{port}")
    try:
        yield f"http://127.0.0.1:{port}", standalone
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("token,status", [
    (None, 401),
    ("not-a-token", 401),
    ("tok-payments-reader", 403),        # a real ServiceAccount without RBAC
    ("tok-billing-app", 403),            # another namespace
    ("tok-checkout-prod-app", 403),      # bound by RBAC, but another environment
    ("tok-payments-checkout", 200),
])
async def test_tokenreview_and_subjectaccessreview_decide(plane, token, status) -> None:
    url, standalone = plane
    seen = []
    standalone.registry.all()[0].on("auditEvent", seen.append)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session:
        for _ in range(2):  # the second answer comes from the review cache
            async with session.post(url + SIGN, json={"input": "aGk="}, headers=headers) as rsp:
                assert rsp.status == status, await rsp.text()
    assert {e.result for e in seen} == {"success" if status == 200 else "denied"}
