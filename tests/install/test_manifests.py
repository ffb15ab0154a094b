"""The install paths: manifests/ (kubectl), the Helm chart, and that both install the same thing.

The chart is rendered and linted by Helm v4 itself, as a library (helm-python-sdk bundles
Helm's Go SDK; no helm binary). A missing test dependency fails the import, never skips.
"""

from __future__ import annotations

import ast
import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from qkms.model.names import PEERING
from tests.install.helpers import (
    CHART,
    CRDS,
    MANIFESTS,
    NAMESPACE,
    ROOT,
    find,
    load_objects,
    manifest_files,
    manifest_objects,
    object_key,
)

IMAGE = "ghcr.io/qkms/qkms:0.1.0"
# Kinds that `kubectl apply` can map before anything in the same run is created.
BUILT_IN_KINDS = {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
                  "RoleBinding", "Service", "StatefulSet",
                  "PodDisruptionBudget", "CustomResourceDefinition", "ConfigMap",
                  "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}

# The operator's contract (what it calls), as (apiGroup, resource, verb). The ClusterRole must
# grant exactly this: a missing line breaks the operator, an extra one is privilege creep.
READ = ("get", "list", "watch")
LIST = ("list", "watch")
CONTRACT: set[tuple[str, str, str]] = {
    *{("qkms.io", "managedkeys", v) for v in (*READ, "patch")},
    *{("qkms.io", "keypolicies", v) for v in (*LIST, "patch")},
    *{("qkms.io", r, "patch") for r in ("managedkeys/status", "keypolicies/status")},
    ("qkms.io", "managedkeys/finalizers", "update"),  # blockOwnerDeletion on projections
    ("", "namespaces", "get"),
    *{("", "secrets", v) for v in (*READ, "create", "update", "delete")},
    *{("", "configmaps", v) for v in (*READ, "create", "update")},
    ("", "events", "create"),
    ("authentication.k8s.io", "tokenreviews", "create"),
    ("authorization.k8s.io", "subjectaccessreviews", "create"),
    *{("kopf.dev", "clusterkopfpeerings", v) for v in (*LIST, "patch")},
    *{("apiextensions.k8s.io", "customresourcedefinitions", v) for v in LIST},
    # the cert-manager issuers (qkms/k8s/issuers.py)
    *{("qkms.io", r, v) for r in ("keyissuers", "clusterkeyissuers") for v in (*READ, "patch")},
    *{("qkms.io", r, "patch") for r in ("keyissuers/status", "clusterkeyissuers/status")},
    *{("cert-manager.io", "certificaterequests", v) for v in READ},
    ("cert-manager.io", "certificaterequests/status", "patch"),
}
# Beyond the contract, each with its reason.
EXTRA = {
    # the init container creates the ClusterKopfPeering "qkms" (see 05-statefulset.yaml)
    ("kopf.dev", "clusterkopfpeerings", "create"),
}
DANGEROUS_VERBS = {"*", "escalate", "bind", "impersonate", "approve", "sign"}


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return manifest_objects()


@pytest.fixture(scope="module")
def deployment(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return find(objects, "StatefulSet", "qkms")


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    spec = deployment["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def operator_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"]
                    if c["name"] == "qkms"]
    return container


def granted(objects: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    rules = find(objects, "ClusterRole", "qkms")["rules"]
    return {(group, resource, verb) for rule in rules for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


# -- manifests/: every file parses, and one `kubectl apply` installs it all ------------------

def test_every_manifest_parses_into_named_objects(objects: list[dict[str, Any]]) -> None:
    files = manifest_files()
    assert files, "manifests/ holds no YAML"
    for path in files:
        assert re.fullmatch(r"\d\d-[a-z0-9-]+\.yaml", path.name), \
            f"{path.name}: number the files, kubectl applies them in name order"
        docs = load_objects(path)
        assert docs, f"{path.name} is empty"
        for obj in docs:
            assert obj.get("apiVersion") and obj.get("kind") and obj["metadata"].get("name"), \
                f"{path.name}: an object without apiVersion, kind or name"
    keys = [object_key(o) for o in objects]
    assert len(keys) == len(set(keys)), "an object is defined twice"
    kinds = {o["kind"] for o in objects}
    assert {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
            "CustomResourceDefinition", "Service", "StatefulSet",
            "PodDisruptionBudget"} <= kinds


def test_one_kubectl_apply_installs_everything(objects: list[dict[str, Any]]) -> None:
    """`kubectl apply -f crds/ -f manifests/`: the namespace comes first, every namespaced
    object lands in it, and nothing needs a kind that only this same apply would create
    (kubectl maps every object before creating any, so such an object would fail)."""
    assert objects[0]["kind"] == "Namespace" and objects[0]["metadata"]["name"] == NAMESPACE
    for obj in objects:
        assert obj["kind"] in BUILT_IN_KINDS, \
            f"{obj['kind']} {obj['metadata']['name']}: kubectl cannot map it in the first apply"
        namespace = obj["metadata"].get("namespace")
        if obj["kind"] in CLUSTER_SCOPED:
            assert namespace is None, f"{obj['kind']} is cluster-scoped"
        else:
            assert namespace == NAMESPACE, f"{obj['kind']} {obj['metadata']['name']}"
    for path in [*CRDS.glob("*.yaml"), *manifest_files()]:
        for obj in load_objects(path):
            assert obj["apiVersion"] != "kustomize.config.k8s.io/v1beta1", \
                f"{path}: `kubectl apply -f` would try to apply a Kustomization"


@pytest.mark.parametrize("kube_version", ["1.30", kubernetes_validate.latest_version()])
def test_manifests_match_the_kubernetes_api_schemas(objects: list[dict[str, Any]],
                                                    kube_version: str) -> None:
    """Strict: a misspelt field (readOnlyRootFS, say) is an error, not silently dropped.
    1.30 is the oldest version the chart declares (kubeVersion in Chart.yaml: the first with
    admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy)."""
    for obj in objects:
        kubernetes_validate.validate(obj, kube_version, strict=True)
    for values in ({}, VALUES_OVERRIDDEN):
        for obj in render(values):
            kubernetes_validate.validate(obj, kube_version, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    """`kubectl apply -k manifests/` installs the same files; the file is named
    ``Kustomization`` (which kustomize reads) so that `kubectl apply -f` skips it."""
    kustomization = yaml.safe_load((MANIFESTS / "Kustomization").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["resources"] == [p.name for p in manifest_files()]
    assert not list(MANIFESTS.glob("kustomization.y*ml"))


def test_kopf_peering_crd_and_object(objects: list[dict[str, Any]],
                                     deployment: dict[str, Any]) -> None:
    crd = find(objects, "CustomResourceDefinition", "clusterkopfpeerings.kopf.dev")
    assert crd["spec"]["group"] == "kopf.dev" and crd["spec"]["scope"] == "Cluster"
    assert crd["spec"]["names"]["kind"] == "ClusterKopfPeering"
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1" and version["served"] and version["storage"]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert status["x-kubernetes-preserve-unknown-fields"] is True  # Kopf writes peers here
    # The object itself is made by the init container, named as `qkms operator` expects.
    script = peering_script(deployment)
    assert f'"name": "{PEERING}"' in script and "clusterkopfpeerings" in script
    ast.parse(script)


def peering_script(deployment: dict[str, Any]) -> str:
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    assert init["name"] == "peering" and init["image"] == IMAGE
    assert init["command"][:2] == ["python", "-c"]
    return init["command"][2]


async def test_peering_init_container_against_an_api_server(
        tmp_path: Path, deployment: dict[str, Any], kube: Any,
        operator_kubeconfig: Path) -> None:
    """The init container's script, run twice against the real kube-apiserver as the pod's
    ServiceAccount (``qkms``, with the RBAC it ships): it creates ClusterKopfPeering "qkms"
    once and then finds it there."""
    script = peering_script(deployment)
    env = {"KUBECONFIG": str(operator_kubeconfig), "HOME": str(tmp_path),
           "PATH": "/usr/bin:/bin"}
    outputs = []
    for _ in range(2):
        proc = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", script], env=env, capture_output=True,
            text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout.strip())
    assert outputs == [f"created ClusterKopfPeering {PEERING}",
                       f"ClusterKopfPeering {PEERING} exists"]
    peering = await kube.get("kopf.dev/v1/clusterkopfpeerings", PEERING)
    assert peering["kind"] == "ClusterKopfPeering"
    assert peering["metadata"]["labels"] == {"app.kubernetes.io/part-of": "qkms"}


# -- the StatefulSet's security posture -----------------------------------------------------

def test_deployment_runs_restricted(deployment: dict[str, Any]) -> None:
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "qkms"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    for container in containers(deployment):
        ctx = container["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == 10001, container["name"]
        assert ctx["readOnlyRootFilesystem"] is True, container["name"]
        assert ctx["allowPrivilegeEscalation"] is False, container["name"]
        assert ctx["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, container["name"]
        assert not ctx.get("privileged"), container["name"]
        limits = container["resources"]["limits"]
        assert limits.get("cpu") and limits.get("memory"), f"{container['name']}: no limits"
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_operator_container(deployment: dict[str, Any]) -> None:
    container = operator_container(deployment)
    assert container["image"] == IMAGE
    assert container["command"] == ["qkms"] and container["args"][0] == "operator"
    assert "--standalone" not in container["args"]  # peering: one active reconciler
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"},
                                      "limits": {"cpu": "500m", "memory": "256Mi"}}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "api": 8443}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
    assert "--liveness=http://0.0.0.0:8080/healthz" in container["args"]
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["tmp"]
    # Each replica's own audit volume, from the StatefulSet's claim template (no shared claim).
    assert "audit" not in volumes
    (claim,) = deployment["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "audit"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert {"name": "audit", "mountPath": "/var/lib/qkms"} in container["volumeMounts"]
    assert deployment["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain", "whenScaled": "Retain"}


def test_operator_environment(deployment: dict[str, Any]) -> None:
    env = {e["name"]: e for e in operator_container(deployment)["env"]}
    assert env["QKMS_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["POD_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # One audit log per replica, named after its pod.
    assert env["QKMS_AUDIT_WRITER"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["QKMS_STATE"]["value"] == "secrets"
    assert env["QKMS_DATA_DIR"]["value"] == "/var/lib/qkms"
    assert env["QKMS_ENVIRONMENT"]["value"] == "dev"
    assert env["KMS_PROVIDER"]["value"] == "LOCAL_DEV"
    assert env["HOME"]["value"] == "/tmp"
    # The data plane: HTTPS with qkms's own CA, tokens minted for the audience "qkms".
    assert env["QKMS_TLS"]["value"] == "auto" and env["QKMS_AUDIENCES"]["value"] == "qkms"
    assert env["QKMS_DATA_PLANE_WORKERS"]["value"] == "auto"  # one per core of limits.cpu
    assert "DEBUG" not in env  # off unless asked for
    # Credentials come from Secrets, never inline.
    for name, var in env.items():
        if re.search(r"TOKEN|SECRET|PASSWORD|PIN$|KEY$", name):
            assert "value" not in var, f"{name} is set inline"


def test_service_pvc_and_disruption_budget(objects: list[dict[str, Any]],
                                           deployment: dict[str, Any]) -> None:
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    service = find(objects, "Service", "qkms")
    assert service["spec"]["selector"] == selector
    assert {(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == \
        {("api", 8443, "api"), ("health", 8080, "health")}
    assert deployment["spec"]["serviceName"] == service["metadata"]["name"]
    assert not [o for o in objects if o["kind"] == "PersistentVolumeClaim"]  # one per replica
    pdb = find(objects, "PodDisruptionBudget", "qkms")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    namespace = find(objects, "Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert find(objects, "ServiceAccount", "qkms")["metadata"]["namespace"] == NAMESPACE


# -- RBAC --------------------------------------------------------------------------------------

def test_rbac_grants_exactly_the_contract(objects: list[dict[str, Any]]) -> None:
    grants = granted(objects)
    assert CONTRACT - grants == set(), "missing permissions"
    assert grants - CONTRACT - EXTRA == set(), "permissions beyond the contract"
    for rule in find(objects, "ClusterRole", "qkms")["rules"]:
        assert "*" not in rule["apiGroups"] and "*" not in rule["resources"]
        assert not set(rule["verbs"]) & DANGEROUS_VERBS, rule
        assert "nonResourceURLs" not in rule
    binding = find(objects, "ClusterRoleBinding", "qkms")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                  "kind": "ClusterRole", "name": "qkms"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "qkms",
                                    "namespace": NAMESPACE}]


CLIENT_CALL = re.compile(
    r"\.(read|list|create|replace|patch|delete)_(namespaced_|cluster_)?"
    r"(secret|config_map|event|namespace|custom_object)(_status)?\b")
VERB = {"read": "get", "list": "list", "create": "create", "replace": "update",
        "patch": "patch", "delete": "delete"}
RESOURCE = {"secret": "secrets", "config_map": "configmaps", "event": "events",
            "namespace": "namespaces"}


def test_rbac_covers_every_api_call_in_the_operator_code(objects: list[dict[str, Any]]) -> None:
    """Read the kubernetes-client calls in operator/qkms and check each one is granted, so
    that new code that calls the API cannot ship without its RBAC."""
    needed: set[tuple[str, str, str]] = set()
    for path in (ROOT / "operator" / "qkms").rglob("*.py"):
        for match in CLIENT_CALL.finditer(path.read_text()):
            verb, resource, status = VERB[match[1]], match[3], match[4]
            if resource == "custom_object":  # qkms's own resources; which one is in the args
                for plural in ("managedkeys", "keypolicies"):
                    needed.add(("qkms.io", plural + ("/status" if status else ""), verb))
            else:
                needed.add(("", RESOURCE[resource], verb))
    # What Kopf does for the handlers in qkms/k8s/handlers.py.
    needed |= {("", r, v) for r in ("secrets", "configmaps") for v in ("list", "watch")}
    needed |= {("qkms.io", r, v) for r in ("managedkeys", "keypolicies")
               for v in ("list", "watch", "patch")}
    needed |= {("", "events", "create"), ("kopf.dev", "clusterkopfpeerings", "patch")}
    # qkms/k8s/issuers.py: Kopf on the issuers, events of CertificateRequests, and its calls
    needed |= {("qkms.io", r, v) for r in ("keyissuers", "clusterkeyissuers")
               for v in ("get", "list", "watch", "patch")}
    needed |= {("qkms.io", r, "patch") for r in ("keyissuers/status", "clusterkeyissuers/status")}
    needed |= {("cert-manager.io", "certificaterequests", v) for v in ("list", "watch")}
    needed.add(("cert-manager.io", "certificaterequests/status", "patch"))
    assert ("", "secrets", "create") in needed  # the scan found the client calls
    assert needed - granted(objects) == set()


# -- the Helm chart ----------------------------------------------------------------------------

def render(values: dict[str, Any] | None = None, *, namespace: str = NAMESPACE
           ) -> list[dict[str, Any]]:
    """`helm template qkms helm/qkms -n NAMESPACE` plus the chart's crds/ (the Kopf one)."""
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values or {}, name="qkms", namespace=namespace)
    objects = [obj for path, text in sorted(rendered.items()) if path.endswith(".yaml")
               for obj in yaml.safe_load_all(text) if obj is not None]
    return objects


def chart_crds() -> dict[str, dict[str, Any]]:
    return {path.name: yaml.safe_load(path.read_text())
            for path in sorted((CHART / "crds").glob("*.yaml"))}


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "qkms"
    assert chart["version"] == "0.1.0" and chart["appVersion"] == "0.1.0"
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version and version[1] == chart["appVersion"]
    assert IMAGE.endswith(":" + chart["appVersion"])


def test_helm_lint_is_clean() -> None:
    report = helm.lint(CHART, strict=True)
    assert report["errors"] == [], report
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [], problems


def test_helm_default_rendering_equals_manifests(objects: list[dict[str, Any]]) -> None:
    """Object by object, with no Helm-only labels to ignore: the chart with its defaults,
    installed with `-n qkms-system --create-namespace`, installs what `kubectl apply -f
    manifests/` installs but the Namespace, which the chart does not own by default (so
    that `helm uninstall` cannot delete the Secrets that hold the keys)."""
    helm_objects = render() + [crd for name, crd in chart_crds().items()
                               if not (CRDS / name).exists()]
    expected = {object_key(o): o for o in objects if o["kind"] != "Namespace"}
    actual = {object_key(o): o for o in helm_objects}
    assert sorted(actual) == sorted(expected)
    for key, obj in expected.items():
        assert actual[key] == obj, f"{key} differs between the chart and manifests/"


def test_a_namespace_the_chart_creates_is_kept_on_uninstall(
        objects: list[dict[str, Any]]) -> None:
    """namespace.create=true renders manifests/' Namespace, kept by `helm uninstall`."""
    rendered = find(render({"namespace": {"create": True}}), "Namespace")
    assert rendered["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}
    assert rendered == find(objects, "Namespace")
    for values in ({"namespace": {"create": True, "name": "keys"}}, {}):
        kept = [o for o in render(values) if o["kind"] == "Namespace"]
        assert all(o["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
                   for o in kept)


def test_chart_crds_are_the_repository_crds() -> None:
    """helm/qkms/crds/ holds crds/ byte for byte, plus Kopf's peering CRD (shared by every
    Kopf operator: Helm installs crds/ once and never deletes them) as in manifests/."""
    chart_files = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    repo_files = {p.name: p.read_bytes() for p in CRDS.glob("*.yaml")}
    assert repo_files and {k: chart_files.get(k) for k in repo_files} == repo_files, \
        "helm/qkms/crds/ is stale: cp crds/*.yaml helm/qkms/crds/"
    extra = set(chart_files) - set(repo_files)
    assert extra == {"clusterkopfpeerings.kopf.dev.yaml"}
    assert chart_files["clusterkopfpeerings.kopf.dev.yaml"] == \
        (MANIFESTS / "01-kopf-peering-crd.yaml").read_bytes()


VALUES_OVERRIDDEN: dict[str, Any] = {
    "namespace": {"name": "", "create": False},  # the defaults, said again
    "image": {"tag": "0.2.0-rc1"},
    "replicas": 3,
    "environment": "prod",
    "provider": {"type": "HASHICORP_VAULT", "credentialsSecretRef": "qkms-vault"},
    "debug": "key-management:*",
    "persistence": {"size": "5Gi", "storageClassName": "fast",
                    "accessMode": "ReadWriteMany"},
    "resources": {"requests": {"cpu": "200m", "memory": "256Mi"},
                  "limits": {"cpu": "1", "memory": "512Mi"}},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "security",
                     "effect": "NoSchedule"}],
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "imagePullSecrets": [{"name": "ghcr"}],
    "dataPlane": {"tlsSecretName": "qkms-cert", "tokenAudience": "kms.example", "workers": 3},
}


def test_helm_values_change_what_they_say() -> None:
    values = VALUES_OVERRIDDEN
    objects = render(values, namespace="keys")
    assert "Namespace" not in {o["kind"] for o in objects}
    for obj in objects:
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"]["namespace"] == "keys", obj["kind"]
    binding = find(objects, "ClusterRoleBinding", "qkms")
    assert binding["subjects"][0]["namespace"] == "keys"
    deployment = find(objects, "StatefulSet", "qkms")
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    assert pod["tolerations"] == values["tolerations"]
    assert pod["nodeSelector"] == values["nodeSelector"]
    assert pod["imagePullSecrets"] == values["imagePullSecrets"]
    assert find(objects, "ServiceAccount", "qkms")["imagePullSecrets"] == \
        values["imagePullSecrets"]
    container = operator_container(deployment)
    assert container["image"] == "ghcr.io/qkms/qkms:0.2.0-rc1"
    assert container["resources"] == values["resources"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["QKMS_ENVIRONMENT"] == "prod" and env["KMS_PROVIDER"] == "HASHICORP_VAULT"
    assert env["DEBUG"] == "key-management:*"
    # A certificate from elsewhere (cert-manager's Secret) instead of qkms's own CA.
    assert "QKMS_TLS" not in env and env["QKMS_TLS_CERT"] == "/etc/qkms/tls/tls.crt"
    assert env["QKMS_AUDIENCES"] == "kms.example" and env["QKMS_DATA_PLANE_WORKERS"] == "3"
    assert {"name": "tls", "secret": {"secretName": "qkms-cert"}} in pod["volumes"]
    assert container["envFrom"] == [{"secretRef": {"name": "qkms-vault"}}]
    (claim,) = deployment["spec"]["volumeClaimTemplates"]
    assert claim["spec"] == {"accessModes": ["ReadWriteMany"], "storageClassName": "fast",
                             "resources": {"requests": {"storage": "5Gi"}}}


def test_one_replica_renders_no_disruption_budget() -> None:
    """A PDB of minAvailable 1 over one replica would block every node drain."""
    assert "PodDisruptionBudget" not in {o["kind"] for o in render({"replicas": 1})}
    assert find(render({"replicas": 2}), "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    with pytest.raises(helm.HelmError, match="would block every drain"):
        render({"replicas": 2, "podDisruptionBudget": {"minAvailable": 2}})


def role_grants(objects: list[dict[str, Any]]) -> dict[str, set[tuple[str, str, str]]]:
    """(apiGroup, resource, verb) per scope: "" for the ClusterRole, else the namespace."""
    scopes: dict[str, set[tuple[str, str, str]]] = {}
    for obj in objects:
        if obj["kind"] in ("ClusterRole", "Role"):
            scope = scopes.setdefault(obj["metadata"].get("namespace", ""), set())
            scope |= {(g, r, v) for rule in obj["rules"] for g in rule["apiGroups"]
                      for r in rule["resources"] for v in rule["verbs"]}
    return scopes


def test_namespace_scoped_mode_grants_the_same_in_roles_only() -> None:
    """watchNamespaces: Roles in each listed namespace and the operator's own, the same
    permissions as the cluster-wide mode altogether, and nothing namespaced left in the
    ClusterRole (no Secret, ConfigMap or ManagedKey of another namespace is reachable)."""
    watched = ["payments", "billing"]
    objects = render({"watchNamespaces": watched})
    scopes = role_grants(objects)
    assert set(scopes) == {"", NAMESPACE, *watched}
    cluster_wide = role_grants(render())[""]
    union = set().union(*scopes.values())
    # Kopf's namespace observer lists and watches namespaces in this mode.
    assert union - cluster_wide == {("", "namespaces", "list"), ("", "namespaces", "watch")}
    assert cluster_wide - union == set()
    namespaced = {"secrets", "configmaps", "events", "managedkeys", "keyissuers",
                  "certificaterequests"}
    assert not {r.split("/")[0] for _, r, _ in scopes[""]} & namespaced
    assert scopes["payments"] == scopes["billing"]
    bindings = [o for o in objects if o["kind"] == "RoleBinding"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == sorted([NAMESPACE, *watched])
    for binding in bindings:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "qkms",
                                        "namespace": NAMESPACE}]
    env = {e["name"]: e.get("value") for e in
           operator_container(find(objects, "StatefulSet", "qkms"))["env"]}
    assert env["QKMS_WATCH_NAMESPACES"] == "payments,billing"
    assert "QKMS_WATCH_NAMESPACES" not in {
        e["name"] for e in operator_container(find(render(), "StatefulSet", "qkms"))["env"]}


@pytest.mark.parametrize("values", [
    {"provider": {"type": "VAULT"}},
    {"provider": {"type": "LOCAL_DEV", "token": "s3cr3t"}},  # credentials are never values
    {"environment": "production"},
    {"replicas": 0},
    {"watchNamespaces": ["Payments"]},
    {"watchNamespaces": "payments"},
    {"dataPlane": {"workers": 0}},
    {"dataPlane": {"workers": "all"}},
])
def test_helm_values_schema_refuses_bad_values(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        render(values)
