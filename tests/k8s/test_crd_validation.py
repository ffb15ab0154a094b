"""The real kube-apiserver enforces the CRDs: every schema constraint and CEL rule refuses a
bad ManagedKey or KeyPolicy with the message the CRD declares, and every example passes.

The bad objects are generated from the CRDs themselves (one per constraint: enum, pattern,
length, minimum, format, required field, type), so a constraint added to the model is
tested here without a new line of test code. Creation uses server-side dry run: the
server validates and admits the object exactly as for a real create, and stores nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.controlplane import ControlPlane
from tests.support.kubeclient import KubeClient, KubeError

ROOT = Path(__file__).resolve().parents[2]
CRDS = {"ManagedKey": ROOT / "crds" / "managedkeys.qkms.io.yaml",
        "KeyPolicy": ROOT / "crds" / "keypolicies.qkms.io.yaml"}
NAMESPACE = "validation"


def schema(kind: str) -> dict[str, Any]:
    crd = yaml.safe_load(CRDS[kind].read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def example(kind: str) -> dict[str, Any]:
    """A valid object of `kind`, from examples/ (the dev policy, the Ed25519 signing key)."""
    name = {"ManagedKey": "managedkey-ed25519-signing.yaml", "KeyPolicy": "keypolicy-dev.yaml"}
    body = yaml.safe_load((ROOT / "examples" / name[kind]).read_text())
    body["metadata"] = {"name": "probe"} | ({"namespace": NAMESPACE} if kind == "ManagedKey"
                                            else {})
    return body


def _bad_string(sub: dict[str, Any]) -> str | None:
    pattern = sub.get("pattern")
    candidates = ["", "!", "Not Valid", "-x-", "P1Y2Z", "a" * 300, "http://[::1", "0"]
    for value in candidates:
        if pattern and not re.search(pattern, value):
            return value
    return None


def violations(sub: dict[str, Any], path: tuple[str, ...]
               ) -> Iterator[tuple[str, tuple[str, ...], Any]]:
    """(constraint, path, a value that breaks it) for every constraint under `sub`."""
    kind = sub.get("type")
    wrong_type = {"string": 12, "integer": "twelve", "boolean": "yes", "array": "x",
                  "object": "x"}.get(kind or "")
    if wrong_type is not None and path:
        yield "type", path, wrong_type
    if "enum" in sub:
        yield "enum", path, "NotAValue"
    if "pattern" in sub and (value := _bad_string(sub)) is not None:
        yield "pattern", path, value
    if "maxLength" in sub:
        yield "maxLength", path, "a" * (sub["maxLength"] + 1)
    if sub.get("minLength"):
        yield "minLength", path, ""
    if "minimum" in sub:
        yield "minimum", path, sub["minimum"] - 1
    if "maximum" in sub:
        yield "maximum", path, sub["maximum"] + 1
    if sub.get("format") == "date-time":
        yield "format", path, "next spring"
    if sub.get("x-kubernetes-list-type") == "set":
        item = (sub["items"].get("enum") or ["same"])[0]
        yield "set", path, [item, item]  # a duplicate in a list declared a set
    extra = sub.get("additionalProperties")
    if isinstance(extra, dict) and extra.get("type") == "string":
        yield "additionalProperties", (*path, "extra"), 12  # a map of strings given a number
    for required in sub.get("required", []):
        yield "required", (*path, f"-{required}"), None
    for name, child in (sub.get("properties") or {}).items():
        yield from violations(child, (*path, name))
    if "items" in sub:
        yield from violations(sub["items"], (*path, "[]"))


def with_value(spec: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of `spec` with `value` at `path` ("[]" = a one-item list; "-x" removes x)."""
    spec = copy.deepcopy(spec)
    node: Any = spec
    for index, part in enumerate(path):
        last = index == len(path) - 1
        if part.startswith("-"):
            node.pop(part[1:], None)
            return spec
        if part == "[]":
            continue
        following = path[index + 1] if not last else None
        if last:
            node[part] = [value] if following == "[]" else value
        elif following == "[]":
            if index + 2 == len(path):
                node[part] = [value]
                return spec
            node = node.setdefault(part, [{}])[0]
        else:
            existing = node.get(part)
            node[part] = existing if isinstance(existing, dict) else {}
            node = node[part]
    return spec


def cases() -> list[Any]:
    found = []
    for kind in CRDS:
        for constraint, path, value in violations(schema(kind), ()):
            name = ".".join(p for p in path if p != "[]")
            found.append(pytest.param(kind, constraint, path, value,
                                      id=f"{kind}-spec.{name}-{constraint}"))
    return found


def field_of(path: tuple[str, ...]) -> str:
    parts = [p for p in path if not p.startswith("-")]
    dotted = ".".join(["spec", *parts]).replace(".[]", "[0]")
    return dotted


@pytest.fixture(scope="module")
def validation_namespace(control_plane: ControlPlane) -> Iterator[str]:
    """One namespace for the whole module: nothing is stored in it but the few objects the
    transition rules need (made and deleted by their tests), so no reset between tests."""
    async def make(delete: bool = False) -> None:
        client = control_plane.client
        try:
            if delete:  # a test's reset may have removed it already
                with contextlib.suppress(KubeError):
                    await client.delete("namespaces", NAMESPACE)
            else:
                await client.create("namespaces", {
                    "apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": NAMESPACE, "labels": {"qkms.io/environment": "dev"}}})
        finally:
            await client.close()
    asyncio.run(make())
    yield NAMESPACE
    asyncio.run(make(delete=True))


@pytest.fixture
async def validation_ns(validation_namespace: str,
                        control_plane: ControlPlane) -> AsyncIterator[KubeClient]:
    client = control_plane.client
    try:
        yield client
    finally:
        await client.close()


async def dry_run_create(kube: KubeClient, body: dict[str, Any]) -> dict[str, Any]:
    plural = {"ManagedKey": "managedkeys", "KeyPolicy": "keypolicies"}[body["kind"]]
    path = await kube.path(plural, body["metadata"].get("namespace"))
    return await kube.request("POST", path, body=body, params={"dryRun": "All"})


@pytest.mark.parametrize(("kind", "constraint", "path", "value"), cases())
async def test_each_schema_constraint_refuses_a_bad_object(validation_ns, kind, constraint,
                                                          path, value):
    body = example(kind)
    body["spec"] = with_value(body["spec"], path, value)
    with pytest.raises(KubeError) as refused:
        await dry_run_create(validation_ns, body)
    assert refused.value.status == 422, refused.value.body
    message = refused.value.body["message"]
    field = field_of(path)
    wanted = f"{field}.{path[-1][1:]}" if constraint == "required" else field
    assert wanted in message, (wanted, message)


async def test_the_generator_covers_every_constraint():
    """A guard for the generator itself: each CRD yields a case per constraint kind used."""
    kinds = {c.values[1] for c in cases()}
    assert {"type", "enum", "pattern", "maxLength", "minLength", "minimum", "format",
            "required", "set", "additionalProperties"} <= kinds
    assert len(cases()) > 80


CEL_CASES = [
    # (kind, spec changes on create, message the CRD declares)
    ("ManagedKey", {"usage": "SIGNING", "algorithm": "AES-256-GCM"},
     "algorithm AES-256-GCM cannot serve usage SIGNING"),
    ("ManagedKey", {"usage": "KEY_DERIVATION", "algorithm": "Ed25519"},
     "algorithm Ed25519 cannot serve usage KEY_DERIVATION"),
    ("ManagedKey", {"projection": {"formats": ["PEM"]}},
     "projection needs a secretName or a configMapName"),
    ("KeyPolicy", {"deletionWindow": "P3D"}, "deletionWindow must be whole days from P7D to P30D"),
    ("KeyPolicy", {"deletionWindow": "P31D"},
     "deletionWindow must be whole days from P7D to P30D"),
]


@pytest.mark.parametrize(("kind", "changes", "message"), CEL_CASES,
                         ids=[f"{c[0]}-{c[2][:30]}" for c in CEL_CASES])
async def test_each_cel_rule_refuses_on_create(validation_ns, kind, changes, message):
    body = example(kind)
    body["spec"].update(changes)
    with pytest.raises(KubeError) as refused:
        await dry_run_create(validation_ns, body)
    assert refused.value.status == 422
    assert message in refused.value.body["message"]


TRANSITION_CASES = [
    ("ManagedKey", {"usage": "ENCRYPTION", "algorithm": "AES-256-GCM"},
     "usage is immutable; create a new ManagedKey"),
    ("KeyPolicy", {"environment": "prod"}, "environment is immutable; create a new KeyPolicy"),
]


@pytest.mark.parametrize(("kind", "changes", "message"), TRANSITION_CASES,
                         ids=[c[0] for c in TRANSITION_CASES])
async def test_each_transition_rule_refuses_an_update(validation_ns, kind, changes, message):
    plural = {"ManagedKey": "managedkeys", "KeyPolicy": "keypolicies"}[kind]
    body = example(kind)
    created = await validation_ns.create(plural, body)
    namespace = created["metadata"].get("namespace")
    try:
        with pytest.raises(KubeError) as refused:
            await validation_ns.patch(plural, "probe", {"spec": changes}, namespace)
    finally:
        await validation_ns.delete(plural, "probe", namespace)
    assert refused.value.status == 422
    assert message in refused.value.body["message"]


async def test_revocation_cannot_be_removed(validation_ns):
    body = example("ManagedKey")
    body["spec"]["revoked"] = {"reason": "decommissioned"}
    await validation_ns.create("managedkeys", body)
    try:
        with pytest.raises(KubeError) as refused:
            await validation_ns.patch("managedkeys", "probe", {"spec": {"revoked": None}},
                                      NAMESPACE)
    finally:
        await validation_ns.delete("managedkeys", "probe", NAMESPACE)
    assert "revocation is permanent: spec.revoked cannot be removed" in \
        refused.value.body["message"]


async def test_every_example_is_accepted(kube: KubeClient):
    """Each example, Namespaces included, as `kubectl apply -f examples/` would send it."""
    docs = [doc for path in sorted((ROOT / "examples").glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]
    for doc in sorted(docs, key=lambda d: d["kind"] != "Namespace"):
        if doc["kind"] == "Namespace":
            await kube.create("namespaces", doc)
        else:
            await dry_run_create(kube, doc)
