"""The optional ServiceMonitor: what Helm renders equals manifests/optional/, and a scrape
made exactly as it says reaches every replica's metrics, on the real API server.

The Prometheus operator does not run here; its ServiceMonitor CRD is reduced to its group,
version and name (the server stores the object; the scrape below reads it back). The
install follows manifests/optional/servicemonitor.yaml's header with the real kubectl:
the token Secret, `kubectl set env --from=secret/...` (the StatefulSet controller rolls the
pods), the ServiceMonitor. Then, as Prometheus would: the Services its selector picks in
its namespaces, the endpoint's port by name through the Service to the pod, HTTPS with the
CA and server name of its tlsConfig, and the bearer token of its authorization.
"""

from __future__ import annotations

import base64
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import helm_python as helm
import yaml

from tests.install.helpers import CHART, NAMESPACE, ROOT
from tests.install.pods import (
    SELECTOR,
    LocalPod,
    kubectl_ok,
    pods_of,
    workload_control_plane,
)
from tests.support.kubeclient import eventually

MONITOR = ROOT / "manifests" / "optional" / "servicemonitor.yaml"
CRD = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
       "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
       "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                "names": {"kind": "ServiceMonitor", "plural": "servicemonitors",
                          "singular": "servicemonitor"},
                "versions": [{"name": "v1", "served": True, "storage": True,
                              "schema": {"openAPIV3Schema": {
                                  "type": "object",
                                  "x-kubernetes-preserve-unknown-fields": True}}}]}}


def test_helm_renders_the_optional_servicemonitor_only_when_enabled() -> None:
    def render(values: dict[str, Any]) -> list[dict[str, Any]]:
        with helm.Chart.load(CHART) as chart:
            rendered = chart.render(values, name="qkms", namespace=NAMESPACE)
        return [doc for path, text in rendered.items() if path.endswith(".yaml")
                for doc in yaml.safe_load_all(text) if doc]
    assert not [o for o in render({}) if o["kind"] == "ServiceMonitor"]
    enabled = render({"metrics": {"serviceMonitor": {"enabled": True}}})
    assert [o for o in enabled if o["kind"] == "ServiceMonitor"] == \
        [yaml.safe_load(MONITOR.read_text())]
    (statefulset,) = [o for o in enabled if o["kind"] == "StatefulSet"]
    env = {e["name"]: e for e in statefulset["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["QKMS_METRICS_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": "qkms-metrics", "key": "token"}}


async def scrape(kube: Any, monitor: dict[str, Any], pod: LocalPod,
                 token: bool = True) -> tuple[int, str]:
    """One scrape of `pod` as the ServiceMonitor describes it."""
    spec = monitor["spec"]
    (endpoint,) = spec["endpoints"]
    services = [s for ns in spec["namespaceSelector"]["matchNames"]
                for s in await kube.list("services", ns, labels=",".join(
                    f"{k}={v}" for k, v in spec["selector"]["matchLabels"].items()))]
    (service,) = services
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    assert port["targetPort"] in pod.named_ports, port
    ns = monitor["metadata"]["namespace"]
    tls = endpoint["tlsConfig"]
    ca = (await kube.get("configmaps", tls["ca"]["configMap"]["name"], ns))["data"][
        tls["ca"]["configMap"]["key"]]
    context = ssl.create_default_context(cadata=ca)
    credentials = endpoint["authorization"]["credentials"]
    secret = await kube.get("secrets", credentials["name"], ns)
    bearer = base64.b64decode(secret["data"][credentials["key"]]).decode()
    headers = {"Authorization": f"Bearer {bearer}"} if token else {}
    url = f"{endpoint['scheme']}://127.0.0.1:{pod.named_ports[port['targetPort']]}" \
          f"{endpoint['path']}"
    async with aiohttp.ClientSession() as session, session.get(
            url, headers=headers, ssl=context, server_hostname=tls["serverName"]) as rsp:
        return rsp.status, await rsp.text()


async def test_a_scrape_as_the_servicemonitor_says_reaches_the_metrics(tmp_path: Path) -> None:
    async with workload_control_plane(tmp_path / "cp") as cp:
        kube = cp.client
        kubectl_ok(cp, "apply", "--server-side", "-f", "crds/", "-f", "manifests/")
        await kube.apply(CRD)
        await eventually(lambda: _served(kube), timeout=30, what="the ServiceMonitor CRD")
        kubectl_ok(cp, "-n", NAMESPACE, "create", "secret", "generic", "qkms-metrics",
                   "--from-literal=token=a-metrics-token-for-prometheus")
        kubectl_ok(cp, "-n", NAMESPACE, "set", "env", "statefulset/qkms", "-c", "qkms",
                   "--from=secret/qkms-metrics", "--keys=token", "--prefix=QKMS_METRICS_")
        kubectl_ok(cp, "apply", "-f", str(MONITOR))

        async def rolled() -> list[dict[str, Any]] | None:
            pods = await pods_of(kube, NAMESPACE, SELECTOR, 2)
            env = [e["name"] for e in pods[0]["spec"]["containers"][0].get("env", [])]
            return pods if "QKMS_METRICS_TOKEN" in env else None
        pods = await eventually(rolled, timeout=60, what="pods with QKMS_METRICS_TOKEN")
        monitor = await kube.get("monitoring.coreos.com/v1/servicemonitors", "qkms", NAMESPACE)
        replica = LocalPod(cp, pods[0], tmp_path / "volumes", tmp_path / "pods")
        try:
            await replica.start()
            status, body = await scrape(kube, monitor, replica)
            assert status == 200, body
            assert "qkms_" in body and "# TYPE" in body
            status, _ = await scrape(kube, monitor, replica, token=False)
            assert status == 401
        finally:
            await replica.stop()
            print(replica.log()[-4000:])


async def _served(kube: Any) -> bool:
    crd = await kube.get("customresourcedefinitions", "servicemonitors.monitoring.coreos.com")
    return any(c["type"] == "Established" and c["status"] == "True"
               for c in ((crd or {}).get("status") or {}).get("conditions") or [])
