"""The qkms CRDs (KeyPolicy, ManagedKey, KeyIssuer, ClusterKeyIssuer), generated from
``qkms.model.policy``, ``qkms.model.managed_key`` and ``qkms.model.issuers``.

The OpenAPI schemas come from the same pydantic models the operator validates
with, turned into the structural form the API server demands ($refs inlined,
``anyOf [X, null]`` reduced to X, no titles).  On top of the schema the API
server gets CEL rules (``x-kubernetes-validations``) for what a schema cannot
say; the algorithm-for-usage rule is generated from the algorithm registry.

Not in CEL, on purpose: "gracePeriod shorter than rotationSchedule".  CEL's
``duration()`` reads Go durations (``720h``), not ISO 8601 (``P30D``, ``P1M``),
and the string functions that could take ``P30D`` apart are Kubernetes
extensions that no CEL evaluator available to our tests implements; an
untestable rule that may refuse valid keys is worse than none.  The operator
enforces it (``parse_managed_key``) and the field description says so.

``crds/`` holds the output; a test fails when it drifts from ``render_crds()``.
Regenerate with ``qkms crds --write crds/`` (or ``python -m qkms.k8s.crds crds/``).
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from qkms.model.algorithms import algorithms_for_usage
from qkms.model.base import DELETION_WINDOW_PATTERN
from qkms.model.enums import Usage
from qkms.model.issuers import ClusterKeyIssuer, KeyIssuer, KeyIssuerSpec, KeyIssuerStatus
from qkms.model.managed_key import ManagedKey, ManagedKeySpec, ManagedKeyStatus
from qkms.model.names import GROUP, VERSION
from qkms.model.policy import KeyPolicy, KeyPolicySpec, KeyPolicyStatus

Schema = dict[str, Any]

# Key order in the generated YAML, for people reading it; the rest keep pydantic's order.
_KEY_ORDER = ("description", "type", "format", "enum", "pattern", "minLength", "maxLength",
              "minimum", "default", "nullable")
_LAST = ("required", "properties", "additionalProperties", "items", "x-kubernetes-validations")


# -- CEL rules --------------------------------------------------------------------

def _cel_list(values: list[str] | tuple[str, ...]) -> str:
    assert not any("'" in v or "\\" in v for v in values)
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def algorithm_rule() -> str:
    """CEL: the algorithm (any spelling) serves the usage, from the registry.

    Usages served by the same algorithms share a branch (SIGNING with
    AUTHENTICATION, ENCRYPTION with TRANSPORT).
    """
    groups: dict[tuple[str, ...], list[str]] = {}
    for usage in Usage:
        names = tuple(n for a in algorithms_for_usage(usage) for n in (a.name, *a.aliases))
        groups.setdefault(names, []).append(usage.value)
    branches = " : ".join(
        f"self.usage in {_cel_list(usages)} ? self.algorithm in {_cel_list(names)}"
        for names, usages in groups.items()
    )
    return f"!has(self.algorithm) || ({branches} : false)"


def _rule(rule: str, message: str, **extra: str) -> dict[str, str]:
    return {"rule": rule, "message": message, **extra}


MANAGED_KEY_RULES: dict[tuple[str, ...], list[dict[str, str]]] = {
    ("spec",): [
        _rule("self.usage == oldSelf.usage", "usage is immutable; create a new ManagedKey"),
        _rule(algorithm_rule(), "algorithm cannot serve this usage",
              messageExpression="'algorithm ' + self.algorithm + ' cannot serve usage ' "
                                "+ self.usage"),
        _rule("!has(oldSelf.revoked) || has(self.revoked)",
              "revocation is permanent: spec.revoked cannot be removed"),
    ],
    ("spec", "projection"): [
        _rule("has(self.secretName) || has(self.configMapName)",
              "projection needs a secretName or a configMapName"),
    ],
}
KEY_POLICY_RULES: dict[tuple[str, ...], list[dict[str, str]]] = {
    ("spec",): [
        _rule("self.environment == oldSelf.environment",
              "environment is immutable; create a new KeyPolicy"),
    ],
    ("spec", "deletionWindow"): [
        _rule(f"self.matches('{DELETION_WINDOW_PATTERN}')",
              "deletionWindow must be whole days from P7D to P30D"),
    ],
}

_CA_RULES: dict[tuple[str, ...], list[dict[str, str]]] = {
    ("spec", "ca"): [
        _rule("has(self.selfSigned) != has(self.secret)",
              "ca needs exactly one of selfSigned and secret"),
    ],
}
KEY_ISSUER_RULES = {
    **_CA_RULES,
    ("spec", "keyRef"): [
        _rule("!has(self.namespace)",
              "a KeyIssuer uses a ManagedKey of its own namespace: leave namespace out"),
    ],
}
CLUSTER_KEY_ISSUER_RULES = {
    **_CA_RULES,
    ("spec", "keyRef"): [
        _rule("has(self.namespace)", "a ClusterKeyIssuer names the ManagedKey's namespace"),
    ],
}


# -- structural schemas -------------------------------------------------------------

def _ordered(node: Schema) -> Schema:
    def rank(key: str) -> tuple[int, int]:
        if key in _KEY_ORDER:
            return (0, _KEY_ORDER.index(key))
        return (2, _LAST.index(key)) if key in _LAST else (1, 0)

    return {k: node[k] for k in sorted(node, key=rank)}


def structural(node: Any, defs: dict[str, Schema]) -> Any:
    """Turn pydantic's JSON schema into a Kubernetes structural schema.

    Inlines ``$ref`` (the referring site's description and default win over
    the definition's), reduces ``anyOf [X, null]`` to X (the API server
    prunes nulls), drops titles, null defaults and ``additionalProperties:
    false`` (the API server prunes and, with kubectl, reports unknown fields),
    and folds docstring line breaks into one paragraph.
    """
    if isinstance(node, list):
        return [structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").rsplit("/", 1)[-1]])
        node = {**target, **node}
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o != {"type": "null"}]
        if len(options) != 1:
            raise ValueError(f"a structural schema cannot express anyOf {options}")
        node = {**structural(options[0], defs), **node}
    for key in ("title", "$defs"):
        node.pop(key, None)
    if node.get("default", ...) is None:
        del node["default"]
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]
    if "description" in node:
        node["description"] = " ".join(node["description"].split())
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            node[key] = structural(node[key], defs)
    if "properties" in node:
        node["properties"] = {k: structural(v, defs) for k, v in node["properties"].items()}
    if "type" not in node:
        raise ValueError(f"a structural schema needs a type: {node}")
    return _ordered(node)


def model_schema(model: type[BaseModel]) -> Schema:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.get("$defs", {}))


# -- CRDs -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Kind:
    """What differs between the two CRDs."""

    resource: type[BaseModel]
    spec: type[BaseModel]
    status: type[BaseModel]
    plural: str
    short_name: str
    scope: str
    columns: list[dict[str, Any]]
    rules: dict[tuple[str, ...], list[dict[str, str]]]
    notes: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.resource.__name__

    @property
    def name(self) -> str:
        return f"{self.plural}.{GROUP}"


def _column(name: str, path: str, type: str = "string", **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type, "jsonPath": path, **extra}


_AGE = _column("Age", ".metadata.creationTimestamp", "date")

KINDS = (
    Kind(
        resource=KeyPolicy, spec=KeyPolicySpec, status=KeyPolicyStatus,
        plural="keypolicies", short_name="kp", scope="Cluster",
        columns=[
            _column("Environment", ".spec.environment"),
            _column("Provider", ".spec.provider.type"),
            _column("Keys", ".status.keys", "integer"),
            _AGE,
        ],
        rules=KEY_POLICY_RULES,
        notes=["deletionWindow must be written PnD (7 to 30 days): the one ISO 8601 form",
               "whose length CEL can check."],
    ),
    Kind(
        resource=ManagedKey, spec=ManagedKeySpec, status=ManagedKeyStatus,
        plural="managedkeys", short_name="mk", scope="Namespaced",
        columns=[
            _column("Algorithm", ".status.algorithm"),
            _column("Provider", ".status.provider"),
            _column("Version", ".status.currentVersion", "integer"),
            _column("Ready", '.status.conditions[?(@.type=="Ready")].status'),
            _column("Next-Rotation", ".status.nextRotation", "date"),
            _AGE,
            _column("Usage", ".spec.usage", priority=1),
            _column("Owner", ".spec.owner", priority=1),
        ],
        rules=MANAGED_KEY_RULES,
        notes=["gracePeriod < rotationSchedule is enforced by the operator, not by CEL:",
               "CEL has no ISO 8601 durations (see qkms/k8s/crds.py)."],
    ),
    *(Kind(
        resource=resource, spec=KeyIssuerSpec, status=KeyIssuerStatus,
        plural=plural, short_name=short, scope=scope,
        columns=[
            _column("Key", ".spec.keyRef.name"),
            _column("Ready", '.status.conditions[?(@.type=="Ready")].status'),
            _column("Reason", '.status.conditions[?(@.type=="Ready")].reason'),
            _column("CA-Expires", ".status.caNotAfter", "date"),
            _AGE,
        ],
        rules=rules,
        notes=["A cert-manager issuer: CertificateRequests with issuerRef.group qkms.io are",
               "signed by the ManagedKey inside its provider (qkms/k8s/issuers.py)."],
    ) for resource, plural, short, scope, rules in (
        (KeyIssuer, "keyissuers", "ki", "Namespaced", KEY_ISSUER_RULES),
        (ClusterKeyIssuer, "clusterkeyissuers", "cki", "Cluster", CLUSTER_KEY_ISSUER_RULES),
    )),
)

# Kopf keeps its own bookkeeping under status.kopf; keep it from being pruned.
_KOPF_STATUS = {
    "description": "Kopf's own bookkeeping.",
    "type": "object",
    "x-kubernetes-preserve-unknown-fields": True,
}


def _add_rules(schema: Schema, rules: dict[tuple[str, ...], list[dict[str, str]]]) -> None:
    for path, node_rules in rules.items():
        node = schema
        for part in path:
            node = node["properties"][part]
        node["x-kubernetes-validations"] = copy.deepcopy(node_rules)


def openapi_schema(kind: Kind) -> Schema:
    status = model_schema(kind.status)
    status["properties"]["kopf"] = _KOPF_STATUS
    schema: Schema = {
        "description": " ".join((kind.resource.__doc__ or "").split()),
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": model_schema(kind.spec),
            "status": status,
        },
    }
    _add_rules(schema, kind.rules)
    return schema


def crd(kind: Kind) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": kind.name, "labels": {"app.kubernetes.io/part-of": "qkms"}},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.kind.lower(),
                "shortNames": [kind.short_name],
                "categories": ["qkms"],
            },
            "scope": kind.scope,
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": kind.columns,
                "schema": {"openAPIV3Schema": openapi_schema(kind)},
            }],
        },
    }


def crds() -> list[dict[str, Any]]:
    return [crd(kind) for kind in KINDS]


# -- YAML -----------------------------------------------------------------------------------

class _Dumper(yaml.SafeDumper):
    """Block style, no anchors (an inlined definition is repeated, never aliased)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_crd(kind: Kind) -> str:
    header = ["Generated from qkms.model by `qkms crds --write crds/`: do not edit.",
              *kind.notes]
    body = yaml.dump(crd(kind), Dumper=_Dumper, sort_keys=False, width=100,
                     default_flow_style=False, allow_unicode=True)
    return "".join(f"# {line}\n" for line in header) + body


def file_name(kind: Kind) -> str:
    return f"{kind.name}.yaml"


def render_crds() -> str:
    """Every CRD as one multi-document YAML stream (``kubectl apply -f -``)."""
    return "---\n".join(render_crd(kind) for kind in KINDS)


def write_crds(folder: str | Path) -> list[Path]:
    """Write one file per CRD (``<plural>.<group>.yaml``) into ``folder``."""
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in KINDS:
        path = target / file_name(kind)
        path.write_text(render_crd(kind), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    if len(sys.argv) > 1:
        for written_path in write_crds(sys.argv[1]):
            print(written_path)
    else:
        sys.stdout.write(render_crds())
