"""A KeyPolicy naming a provider whose SDK the operator lacks, on the real API server.

The operator runs as a process logged in as its ServiceAccount, with the Vault, AWS, Azure
and PKCS#11 SDKs made unimportable (as in an image built with only the operator extra).
A ManagedKey under a HASHICORP_VAULT policy is not an ImportError in a handler's traceback:
its status says ``KMS provider unavailable: HASHICORP_VAULT: hvac is not installed``, a
ProviderUnavailable Event says it too, and the operator retries (the key becomes usable
once the SDK is there).
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.k8s.conftest import qkms_operator_process
from tests.support.kubeclient import eventually

ROOT = Path(__file__).resolve().parents[2]
NS = "vaulted"
MESSAGE = "KMS provider unavailable: HASHICORP_VAULT: hvac is not installed"


async def test_a_missing_provider_sdk_is_reported_not_raised(kube, operator_kubeconfig,
                                                            tmp_path):
    blocker = tmp_path / "no-provider-sdks"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\nfor name in ('hvac', 'boto3', 'botocore', 'azure', 'pkcs11'):\n"
        "    sys.modules[name] = None\n")
    path = os.pathsep.join([str(blocker), str(ROOT), str(ROOT / "operator")])
    operator = qkms_operator_process(operator_kubeconfig, tmp_path / "operator",
                                     {"PYTHONPATH": path})
    await kube.create("namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                     "metadata": {"name": NS,
                                                  "labels": {"qkms.io/environment": "staging"}}})
    await kube.create("keypolicies", {
        "apiVersion": "qkms.io/v1alpha1", "kind": "KeyPolicy", "metadata": {"name": "staging"},
        "spec": {"environment": "staging",
                 "provider": {"type": "HASHICORP_VAULT",
                              "settings": {"address": "http://127.0.0.1:1"}}}})
    await kube.create("managedkeys", {
        "apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
        "metadata": {"name": "signer", "namespace": NS},
        "spec": {"usage": "SIGNING", "algorithm": "Ed25519", "owner": "team"}}, NS)
    try:
        await operator.start()

        async def reported() -> dict | None:
            body = await kube.get("managedkeys", "signer", NS)
            ready = {c["type"]: c for c in (body.get("status") or {}).get("conditions", [])}
            condition = ready.get("Ready") or {}
            return condition if MESSAGE in condition.get("message", "") else None
        condition = await eventually(reported, timeout=30, what="ProviderUnavailable status")
        assert condition["status"] == "False" and condition["reason"] == "ProviderUnavailable"

        async def event() -> bool:
            return any(e["reason"] == "ProviderUnavailable" and MESSAGE in e["message"]
                       for e in await kube.list("events", NS))
        await eventually(event, timeout=30, what="a ProviderUnavailable Event")
        log = operator.log()
        assert "ModuleNotFoundError" not in log and "Traceback" not in log, log[-4000:]
    finally:
        await operator.stop()
        print(operator.log()[-6000:])
