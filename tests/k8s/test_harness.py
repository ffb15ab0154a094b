"""The Kubernetes test harness works: kmock's emulated API is faithful where Kopf needs it,
and a real Kopf operator process handles resources, survives SIGKILL and API restarts.

The operator here is tests/k8s/sample_operator.py, a throwaway; qkms's own operator tests
build on the same fixtures.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import require_server

try:
    import kmock
    import kubernetes

    from tests.support.kube import KubeAPI, KubeError, eventually
    from tests.support.operator_process import OperatorProcess
except ImportError as exc:  # kmock, kopf or the kubernetes client is not installed
    require_server("kmock", f"cannot import the harness: {exc!r}", module_level=True)

pytestmark = pytest.mark.server

MK = "qkms.io/v1alpha1/managedkeys"
KP = "qkms.io/v1alpha1/keypolicies"
NS = "team-a"


def managed_key(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"usage": "SIGNING", "owner": "team-a",
                                                 "algorithm": "Ed25519"}}


async def make_namespace(api: KubeAPI, name: str = NS, environment: str = "dev") -> None:
    await api.create("v1/namespaces", {"metadata": {
        "name": name, "labels": {"qkms.io/environment": environment}}})


async def watch_events(api: KubeAPI, resource: str, count: int, **params: str) -> list[Any]:
    """The first `count` events of a watch (or fewer if the server ends it first)."""
    events: list[Any] = []
    async with contextlib.aclosing(api.watch(resource, **params)) as stream:
        async for event in stream:
            events.append(event)
            if len(events) == count:
                break
    return events


# -- the skip/fail policy --------------------------------------------------------------------

def test_require_server_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QKMS_REQUIRE_SERVERS", "1")
    with pytest.raises(pytest.fail.Exception, match="kmock is not available: no port"):
        require_server("kmock", "no port")
    monkeypatch.delenv("QKMS_REQUIRE_SERVERS")
    with pytest.raises(pytest.skip.Exception, match="kmock is not available: no port"):
        require_server("kmock", "no port")


# -- the emulated API on its own -------------------------------------------------------------

async def test_discovery_serves_crds_with_status_subresources(kube_inproc: KubeAPI) -> None:
    api = kube_inproc
    found = await api.request("GET", "/apis/qkms.io/v1alpha1")
    by_name = {r["name"]: r for r in found["resources"]}
    assert by_name["managedkeys"]["namespaced"] is True
    assert by_name["managedkeys"]["shortNames"] == ["mk"]
    assert by_name["keypolicies"]["namespaced"] is False
    assert by_name["keypolicies"]["shortNames"] == ["kp"]
    assert {"managedkeys/status", "keypolicies/status"} <= set(by_name)
    groups = {g["name"] for g in (await api.request("GET", "/apis"))["groups"]}
    assert {"qkms.io", "kopf.dev", "apiextensions.k8s.io", "coordination.k8s.io"} <= groups

    crd = {"metadata": {"name": "widgets.example.com"}, "spec": {
        "group": "example.com", "scope": "Namespaced",
        "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
        "versions": [{"name": "v1", "served": True, "storage": True}]}}
    await api.create("apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    assert (await api.request("GET", "/apis/example.com/v1"))["resources"][0]["kind"] == "Widget"
    await api.delete("apiextensions.k8s.io/v1/customresourcedefinitions", "widgets.example.com")
    with pytest.raises(KubeError) as exc:
        await api.list("example.com/v1/widgets")
    assert exc.value.status == 404


async def test_crd_schemas_default_and_prune_fields(kube_inproc: KubeAPI) -> None:
    """As a real API server: fields outside a CRD's schema vanish, and defaults appear."""
    api = kube_inproc
    await make_namespace(api)
    schema = {"type": "object", "properties": {
        "spec": {"type": "object", "properties": {
            "size": {"type": "integer", "default": 3},
            "provider": {"type": "object", "default": {}, "properties": {
                "type": {"type": "string", "default": "LOCAL_DEV"},
                "settings": {"type": "object", "additionalProperties": {"type": "string"}}}}}},
        "status": {"type": "object", "properties": {
            "phase": {"type": "string"},
            "kopf": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}}
    await api.create("apiextensions.k8s.io/v1/customresourcedefinitions", {
        "metadata": {"name": "widgets.example.com"}, "spec": {
            "group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "kind": "Widget"},
            "versions": [{"name": "v1", "served": True, "storage": True,
                          "subresources": {"status": {}},
                          "schema": {"openAPIV3Schema": schema}}]}})

    widget = await api.create("example.com/v1/widgets", {
        "metadata": {"name": "w"}, "extra": 1,
        "spec": {"bogus": 1, "provider": {"settings": {"region": "eu"}}}}, NS)
    assert "extra" not in widget
    assert widget["spec"] == {"size": 3, "provider": {"type": "LOCAL_DEV",
                                                      "settings": {"region": "eu"}}}
    status = await api.patch("example.com/v1/widgets", "w", {"status": {
        "phase": "Ready", "nope": 1, "kopf": {"progress": {"x": 1}}}}, NS, subresource="status")
    assert status["status"] == {"phase": "Ready", "kopf": {"progress": {"x": 1}}}


async def test_writes_get_names_versions_and_optimistic_locking(kube_inproc: KubeAPI) -> None:
    api = kube_inproc
    await make_namespace(api)
    event = await api.create("v1/events", {"metadata": {"generateName": "kopf-event-"},
                                           "message": "hello"}, NS)
    assert event["metadata"]["name"].startswith("kopf-event-")
    assert len(event["metadata"]["name"]) == len("kopf-event-") + 5

    created = await api.create(MK, managed_key("k1"), NS)
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"] and meta["generation"] == 1
    with pytest.raises(KubeError) as exc:
        await api.create(MK, managed_key("k1"), NS)
    assert exc.value.status == 409

    patched = await api.patch(MK, "k1", {"spec": {"owner": "team-b"}}, NS)
    assert int(patched["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    assert patched["metadata"]["generation"] == 2
    same = await api.patch(MK, "k1", {"spec": {"owner": "team-b"}}, NS)
    assert same["metadata"]["resourceVersion"] == patched["metadata"]["resourceVersion"]

    stale = {"metadata": {"resourceVersion": meta["resourceVersion"]}, "spec": {"owner": "x"}}
    with pytest.raises(KubeError) as exc:
        await api.patch(MK, "k1", stale, NS)
    assert exc.value.status == 409
    with pytest.raises(KubeError) as exc:  # Kopf's finalizer patch: a JSON-patch with a test op
        await api.patch(MK, "k1", [
            {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]},
            {"op": "add", "path": "/metadata/finalizers", "value": ["x"]}], NS)
    assert exc.value.status == 422
    with pytest.raises(KubeError) as exc:  # PUT with a stale resourceVersion
        await api.replace(MK, created, NS)
    assert exc.value.status == 409

    # The status subresource changes the status only; the main endpoint ignores the status.
    status = await api.patch(MK, "k1", {"status": {"phase": "Ready"}, "spec": {"owner": "no"}},
                             NS, subresource="status")
    assert status["status"] == {"phase": "Ready"} and status["spec"]["owner"] == "team-b"
    main = await api.patch(MK, "k1", {"status": {"phase": "Hacked"}, "metadata": {
        "labels": {"a": "b"}}}, NS)
    assert main["status"] == {"phase": "Ready"} and main["metadata"]["labels"] == {"a": "b"}
    json_status = await api.patch(MK, "k1", [
        {"op": "test", "path": "/metadata/resourceVersion",
         "value": main["metadata"]["resourceVersion"]},
        {"op": "replace", "path": "/status/phase", "value": "Rotating"}], NS, subresource="status")
    assert json_status["status"]["phase"] == "Rotating"
    replaced = await api.replace(MK, {**json_status, "spec": {**json_status["spec"], "owner": "c"}},
                                 NS)
    assert replaced["spec"]["owner"] == "c" and replaced["status"]["phase"] == "Rotating"

    policy = await api.create(KP, {"metadata": {"name": "dev"}, "spec": {"environment": "dev"}})
    assert "namespace" not in policy["metadata"]  # cluster-scoped
    with pytest.raises(KubeError) as exc:
        await api.create(MK, managed_key("k2"), "no-such-namespace")
    assert exc.value.status == 404


async def test_finalizers_hold_deletion_and_owners_collect_dependents(
        kube_inproc: KubeAPI) -> None:
    api = kube_inproc
    await make_namespace(api)
    key = await api.create(MK, {**managed_key("k1"), "metadata": {
        "name": "k1", "finalizers": ["qkms.io/finalizer"]}}, NS)
    owner = {"apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey", "name": "k1",
             "uid": key["metadata"]["uid"], "controller": True}
    await api.create("v1/configmaps", {"metadata": {"name": "k1-pub", "ownerReferences": [owner]},
                                       "data": {"pem": "..."}}, NS)

    deleting = await api.delete(MK, "k1", NS)
    assert deleting["metadata"]["deletionTimestamp"]
    assert (await api.get(MK, "k1", NS))["metadata"]["finalizers"] == ["qkms.io/finalizer"]
    with pytest.raises(KubeError) as exc:
        await api.patch(MK, "k1", {"metadata": {"finalizers": ["qkms.io/finalizer", "new"]}}, NS)
    assert exc.value.status == 422
    assert await api.get("v1/configmaps", "k1-pub", NS) is not None  # the owner still exists

    await api.patch(MK, "k1", {"metadata": {"finalizers": None}}, NS)
    assert await api.get(MK, "k1", NS) is None
    assert await api.get("v1/configmaps", "k1-pub", NS) is None  # garbage-collected

    await api.create("v1/secrets", {"metadata": {"name": "s", "finalizers": ["f"]}}, NS)
    terminating = await api.delete("v1/namespaces", NS)
    assert terminating["status"]["phase"] == "Terminating"
    with pytest.raises(KubeError) as exc:
        await api.create("v1/configmaps", {"metadata": {"name": "late"}}, NS)
    assert exc.value.status == 403
    await api.patch("v1/secrets", "s", {"metadata": {"finalizers": []}}, NS)
    assert await api.get("v1/namespaces", NS) is None  # gone once its contents are gone


async def test_selectors_and_core_resources(kube_inproc: KubeAPI) -> None:
    api = kube_inproc
    await make_namespace(api, "team-a", "dev")
    await make_namespace(api, "team-b", "prod")

    async def names(**selectors: str) -> set[str]:
        return {n["metadata"]["name"] for n in await api.list("v1/namespaces", **selectors)}

    assert await names(labels="qkms.io/environment=dev") == {"team-a"}
    assert await names(labels="qkms.io/environment in (dev, prod)") == {"team-a", "team-b"}
    assert await names(labels="qkms.io/environment,qkms.io/environment!=dev") == {"team-b"}
    assert "default" in await names(labels="!qkms.io/environment")
    assert "team-a" not in await names(labels="qkms.io/environment notin (dev)")
    assert await names(fields="metadata.name=team-b") == {"team-b"}
    with pytest.raises(KubeError) as exc:
        await names(labels="a in b")
    assert exc.value.status == 400

    secret = await api.create("v1/secrets", {"metadata": {"name": "creds"},
                                             "stringData": {"token": "s3cret"}}, "team-a")
    assert secret["type"] == "Opaque" and "stringData" not in secret
    assert base64.b64decode(secret["data"]["token"]) == b"s3cret"

    for name in ("k1", "k2"):
        await api.create("v1/events", {"metadata": {"generateName": "ev-"}, "reason": "R",
                                       "involvedObject": {"kind": "ManagedKey", "name": name}},
                         "team-a")
    events = await api.list("v1/events", "team-a", fields="involvedObject.name=k2")
    assert [e["involvedObject"]["name"] for e in events] == ["k2"]

    page = await api.request("GET", "/api/v1/namespaces", params={"limit": "2"})
    assert len(page["items"]) == 2 and page["metadata"]["continue"]
    rest = await api.request("GET", "/api/v1/namespaces",
                             params={"limit": "100", "continue": page["metadata"]["continue"]})
    assert len(page["items"]) + len(rest["items"]) == len(await api.list("v1/namespaces"))


async def test_watches_resume_from_resource_versions(kube_inproc: KubeAPI) -> None:
    api = kube_inproc
    await make_namespace(api)
    first = await api.create(MK, managed_key("k1"), NS)
    since = first["metadata"]["resourceVersion"]
    await api.patch(MK, "k1", {"metadata": {"labels": {"tier": "gold"}}}, NS)
    await api.create(MK, managed_key("k2"), NS)
    await api.delete(MK, "k2", NS)

    replay = await watch_events(api, MK, 3, resourceVersion=since, timeoutSeconds="5")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in replay] == [
        ("MODIFIED", "k1"), ("ADDED", "k2"), ("DELETED", "k2")]
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in replay]
    assert rvs == sorted(rvs) and rvs[0] > int(since)

    # A selector sees objects move in and out of it as ADDED/DELETED.
    selected = await watch_events(api, MK, 1, resourceVersion=since, labelSelector="tier=gold",
                                  timeoutSeconds="5")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in selected] == [("ADDED", "k1")]

    # A fresh watch lists first; bookmarks arrive while idle; timeoutSeconds ends the stream.
    assert kube_inproc.emulator is not None
    kube_inproc.emulator.bookmark_interval = 0.1
    fresh = await watch_events(api, MK, 100, allowWatchBookmarks="true", timeoutSeconds="1")
    assert fresh[0]["type"] == "ADDED" and fresh[0]["object"]["metadata"]["name"] == "k1"
    assert {e["type"] for e in fresh[1:]} == {"BOOKMARK"} and len(fresh) < 100
    initial = await watch_events(api, MK, 2, sendInitialEvents="true", timeoutSeconds="5")
    assert initial[1]["type"] == "BOOKMARK"
    assert initial[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}

    # Events older than the kept log cannot be replayed: 410 Gone makes clients re-list.
    kube_inproc.emulator.event_log_size = 2
    for owner in ("a", "b", "c"):
        await api.patch(MK, "k1", {"spec": {"owner": owner}}, NS)
    gone = await watch_events(api, MK, 1, resourceVersion=since, timeoutSeconds="5")
    assert gone[0]["type"] == "ERROR" and gone[0]["object"]["code"] == 410


async def test_open_watches_are_listed_for_the_harness(kube: KubeAPI) -> None:
    """``wait_watching`` finds a watch once it is open (writes after that reach it), and
    tells watches opened after a given serial from older ones."""
    before = (await kube.open_watches())["serial"]
    async with contextlib.aclosing(kube.watch("v1/namespaces", timeoutSeconds="5")) as stream:
        first = await anext(stream)  # the first listed namespace: the watch is open
        assert first["type"] == "ADDED"
        watch = await kube.wait_watching("v1/namespaces", after=before, timeout=5)
        assert watch["serial"] > before and watch["namespace"] is None
        assert watch["params"]["watch"] == "true"
        with pytest.raises(TimeoutError, match="a watch of .*managedkeys"):
            await kube.wait_watching(MK, timeout=0.2)
        with pytest.raises(TimeoutError):  # not one opened after it
            await kube.wait_watching("v1/namespaces", after=watch["serial"], timeout=0.2)
        await make_namespace(kube)
        async for event in stream:  # created after the watch opened: it is seen
            if event["object"]["metadata"]["name"] == NS:
                assert event["type"] == "ADDED"
                break


async def test_faults_can_be_injected_with_kmock_reactions(kube_inproc: KubeAPI) -> None:
    """kmock's DSL still works on top of the emulator: here, one 503 on the next patch."""
    api, emulator = kube_inproc, kube_inproc.emulator
    assert emulator is not None
    await api.create("v1/configmaps", {"metadata": {"name": "c"}}, "default")
    emulator["patch", kmock.resource("v1/configmaps")][:1] << 503
    with pytest.raises(KubeError) as exc:
        await api.patch("v1/configmaps", "c", {"data": {"k": "v"}}, "default")
    assert exc.value.status == 503
    assert (await api.patch("v1/configmaps", "c", {"data": {"k": "v"}}, "default"))["data"]
    assert emulator.objects["v1/configmaps", "default", "c"]["data"] == {"k": "v"}


async def test_the_kubernetes_client_works_against_it(kube_inproc: KubeAPI) -> None:
    client = kubernetes.config.new_client_from_config(config_file=str(kube_inproc.kubeconfig))
    core = kubernetes.client.CoreV1Api(client)
    custom = kubernetes.client.CustomObjectsApi(client)

    def scenario() -> None:
        core.create_namespace({"metadata": {"name": NS, "labels": {"qkms.io/environment": "dev"}}})
        assert [n.metadata.name for n in core.list_namespace(
            label_selector="qkms.io/environment=dev").items] == [NS]
        core.create_namespaced_secret(NS, {"metadata": {"name": "s"}, "data": {"k": "dg=="}})
        secret = core.read_namespaced_secret("s", NS)
        secret.data["k"] = "dw=="
        core.replace_namespaced_secret("s", NS, secret)
        core.patch_namespaced_secret("s", NS, {"metadata": {"labels": {"a": "b"}}})
        assert core.read_namespaced_secret("s", NS).metadata.labels == {"a": "b"}
        core.delete_namespaced_secret("s", NS)
        custom.create_namespaced_custom_object("qkms.io", "v1alpha1", NS, "managedkeys",
                                               managed_key("k1"))
        custom.patch_namespaced_custom_object_status("qkms.io", "v1alpha1", NS, "managedkeys",
                                                     "k1", {"status": {"phase": "Ready"}})
        keys = custom.list_namespaced_custom_object("qkms.io", "v1alpha1", NS, "managedkeys")
        assert keys["items"][0]["status"] == {"phase": "Ready"}
        with pytest.raises(kubernetes.client.ApiException) as exc:
            core.read_namespaced_config_map("missing", NS)
        assert exc.value.status == 404

    try:
        await asyncio.to_thread(scenario)
    finally:
        client.close()


async def test_state_survives_an_api_server_crash(kube: KubeAPI) -> None:
    await make_namespace(kube)
    key = await kube.create(MK, managed_key("k1"), NS)
    await eventually(lambda: "team-a" in kube.state_path.read_text(), what="the periodic save")
    await kube.kill()  # SIGKILL: only the periodic save survives
    await kube.start()
    again = await kube.get(MK, "k1", NS)
    assert again is not None and again["metadata"]["uid"] == key["metadata"]["uid"]
    later = await kube.patch(MK, "k1", {"spec": {"owner": "x"}}, NS)
    assert int(later["metadata"]["resourceVersion"]) > int(key["metadata"]["resourceVersion"])


# -- a real Kopf operator process against it -------------------------------------------------

async def key_ready(api: KubeAPI, name: str) -> dict[str, Any] | None:
    key = await api.get(MK, name, NS)
    return key if key and (key.get("status") or {}).get("phase") == "Ready" else None


async def absent(api: KubeAPI, name: str) -> bool:
    return await api.get(MK, name, NS) is None


def started_count(path: Path) -> int:
    """How many times a gated handler step started (one line per start)."""
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.parametrize("namespaces", [[], ["team-*"]], ids=["all-namespaces", "ns-pattern"])
async def test_operator_handles_a_managed_key(kube: KubeAPI, sample_operator: OperatorProcess,
                                              namespaces: list[str]) -> None:
    """Cluster-wide, and with a namespace pattern (Kopf then lists and watches namespaces)."""
    op = sample_operator
    op.namespaces = namespaces
    await op.start()
    await make_namespace(kube)
    await kube.create(MK, managed_key("k1"), NS)

    key = await eventually(lambda: key_ready(kube, "k1"), what="status patched",
                           context=op.log_tail)
    assert key["status"]["environment"] == "dev"  # read from the namespace's label
    assert key["metadata"]["finalizers"] == ["qkms.io/sample-finalizer"]
    events = await kube.list("v1/events", NS, fields="involvedObject.name=k1")
    assert [e["reason"] for e in events] == ["KeyCreated"]
    assert events[0]["metadata"]["name"].startswith("kopf-event-")  # generateName honoured
    info = await kube.get("v1/configmaps", "k1-info", NS)
    assert info is not None and info["data"] == {"environment": "dev"}
    assert info["metadata"]["ownerReferences"][0]["uid"] == key["metadata"]["uid"]

    await kube.delete(MK, "k1", NS)
    await eventually(lambda: absent(kube, "k1"), what="the key deleted after its finalizer",
                     context=op.log_tail)
    tombstones = await kube.get("v1/configmaps", "sample-tombstones", NS)
    assert tombstones is not None and tombstones["data"] == {"k1": "deleted"}
    assert await kube.get("v1/configmaps", "k1-info", NS) is None


async def test_operator_resumes_after_sigkill(kube: KubeAPI, sample_operator: OperatorProcess,
                                              gate_dir: Path) -> None:
    op = sample_operator
    await make_namespace(kube)
    await op.start()

    # Kill it in the middle of the create handler; a fresh process finishes the job.
    (gate_dir / "k1.create.hold").touch()
    await kube.create(MK, managed_key("k1"), NS)
    started = gate_dir / "k1.create.started"
    await eventually(lambda: started_count(started) == 1, what="create handler",
                     context=op.log_tail)
    await op.kill()
    assert (await kube.get(MK, "k1", NS)).get("status") is None
    (gate_dir / "k1.create.hold").unlink()
    await op.start()  # a new process in a new working directory
    await eventually(lambda: key_ready(kube, "k1"), what="status after restart",
                     context=op.log_tail)
    assert len(set(started.read_text().split())) == 2  # ran again, in another process

    # Kill it in the middle of the delete handler: the finalizer keeps the object meanwhile.
    (gate_dir / "k1.delete.hold").touch()
    await kube.delete(MK, "k1", NS)
    await eventually(lambda: started_count(gate_dir / "k1.delete.started") == 1,
                     what="delete handler", context=op.log_tail)
    await op.kill()
    held = await kube.get(MK, "k1", NS)
    assert held is not None and held["metadata"]["deletionTimestamp"]
    assert held["metadata"]["finalizers"] == ["qkms.io/sample-finalizer"]
    (gate_dir / "k1.delete.hold").unlink()
    await op.start()
    await eventually(lambda: absent(kube, "k1"), what="deletion after restart",
                     context=op.log_tail)
    assert (await kube.get("v1/configmaps", "sample-tombstones", NS))["data"] == {"k1": "deleted"}


async def test_operator_reconnects_after_api_restart(kube: KubeAPI,
                                                     running_operator: OperatorProcess) -> None:
    op = running_operator
    await make_namespace(kube)
    await kube.create(MK, managed_key("k1"), NS)
    before = await eventually(lambda: key_ready(kube, "k1"), what="k1 ready", context=op.log_tail)

    await kube.restart()  # graceful: the state is saved and reloaded, on the same port
    after = await kube.get(MK, "k1", NS)
    assert after == before

    await kube.create(MK, managed_key("k2"), NS)  # only a reconnected operator handles it
    await eventually(lambda: key_ready(kube, "k2"), what="k2 ready after the API restart",
                     context=op.log_tail)
    await kube.delete(MK, "k1", NS)
    await eventually(lambda: absent(kube, "k1"), what="k1 deleted", context=op.log_tail)
    assert op.running


async def test_operator_with_kopf_peering(kube: KubeAPI, sample_operator: OperatorProcess) -> None:
    """Kopf's peering (not --standalone) works too: the operator reports itself as a peer."""
    await kube.create("kopf.dev/v1/clusterkopfpeerings", {"metadata": {"name": "qkms-test"}})
    op = sample_operator
    op.standalone, op.peering = False, "qkms-test"
    await op.start()

    async def peers() -> dict[str, Any] | None:
        peering = await kube.get("kopf.dev/v1/clusterkopfpeerings", "qkms-test")
        return (peering or {}).get("status")

    status = await eventually(peers, what="a peer in the peering object", context=op.log_tail)
    assert len(status) == 1
    await make_namespace(kube)
    await kube.create(MK, managed_key("k1"), NS)
    await eventually(lambda: key_ready(kube, "k1"), what="k1 ready", context=op.log_tail)
