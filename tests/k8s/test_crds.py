"""The generated CRDs: structural, in step with the models, their CEL rules right.

``admit`` stands in for the API server's admission of a custom resource: it
validates the body against the CRD's openAPIV3Schema with ``jsonschema`` and
evaluates every ``x-kubernetes-validations`` rule with cel-python (transition
rules only when an old object is given).  cel-python implements standard CEL
but not Kubernetes' extension libraries, which is why the rules use only
standard CEL.  The rules are also
checked for balanced syntax.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from qkms import lifecycle
from qkms.k8s.crds import (
    KINDS,
    algorithm_rule,
    crds,
    file_name,
    openapi_schema,
    render_crd,
    render_crds,
    write_crds,
)
from qkms.model.algorithms import ALGORITHMS
from qkms.model.base import DELETION_WINDOW_PATTERN
from qkms.model.durations import DURATION_PATTERN as CRD_DURATION_PATTERN
from qkms.model.enums import Usage

# An independent statement of the grammar, with lookahead (which RE2 lacks).
DURATION_PATTERN = (
    r"^P(?!$)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?$"
)

REPO = Path(__file__).parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "resources"
KIND = {kind.kind: kind for kind in KINDS}

import celpy  # noqa: E402 - cel-python is a test dependency: a missing one fails the run


def nodes(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every schema node with its path."""
    found = [(path or ".", schema)]
    for name, sub in schema.get("properties", {}).items():
        found += nodes(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            found += nodes(schema[key], f"{path}[{key}]")
    return found


def all_rules() -> list[str]:
    return [rule["rule"] for kind in KINDS for _, node in nodes(openapi_schema(kind))
            for rule in node.get("x-kubernetes-validations", [])]


# -- CEL and admission ------------------------------------------------------------------------

@functools.cache
def program(expression: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(expression))


def cel(expression: str, value: Any, old: Any = None) -> Any:
    activation = {"self": celpy.json_to_cel(value)}
    if old is not None:
        activation["oldSelf"] = celpy.json_to_cel(old)
    return program(expression).evaluate(activation)


def holds(expression: str, value: Any, old: Any = None) -> bool:
    """A rule holds only when it yields true; an evaluation error fails it, as in Kubernetes."""
    result = cel(expression, value, old)
    return isinstance(result, celpy.celtypes.BoolType) and bool(result)


def cel_failures(schema: dict[str, Any], value: Any, old: Any) -> list[str]:
    failures = []
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"] and old is None:
            continue  # a transition rule: only on update, only where the old value exists
        if not holds(rule["rule"], value, old):
            message = rule.get("messageExpression")
            failures.append(str(cel(message, value, old)) if message else rule["message"])
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                before = old.get(name) if isinstance(old, dict) else None
                failures += cel_failures(sub, value[name], before)
    if isinstance(value, list) and "items" in schema:
        for item in value:
            failures += cel_failures(schema["items"], item, None)
    return failures


def admit(body: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """What the API server would say about ``body``: [] when it is admitted."""
    schema = openapi_schema(KIND[body["kind"]])
    problems = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(body)]
    if problems:
        return problems
    return cel_failures(schema, body, old)


def fixtures() -> list[Any]:
    return [pytest.param(yaml.safe_load(p.read_text()), id=p.stem)
            for p in sorted(FIXTURES.glob("*.yaml"))]


@pytest.mark.parametrize("case", fixtures())
def test_fixture_admission(case: dict[str, Any]) -> None:
    """The API server agrees with the operator, except where the fixture says why not."""
    expect = case["expect"]
    outcome = expect.get("admission", "rejected" if "error" in expect else "accepted")
    problems = admit(case["input"])
    if outcome == "accepted":
        assert problems == []
        return
    assert problems, "the API server would admit this"
    if outcome != "rejected" :
        assert outcome in problems


# -- structure -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_schema_is_structural(kind: Any) -> None:
    schema = openapi_schema(kind)
    text = yaml.safe_dump(schema)
    for forbidden in ("$ref", "anyOf", "allOf", "oneOf", "title:", "$defs", "nullable",
                      "uniqueItems", "const:"):
        assert forbidden not in text, forbidden
    for path, node in nodes(schema):
        assert "type" in node, f"{path} has no type"
        assert node.get("additionalProperties") is not False, path
        if node["type"] == "object" and not node.get("x-kubernetes-preserve-unknown-fields"):
            assert "properties" in node or "additionalProperties" in node or path == ".metadata"
        if node.get("x-kubernetes-list-type") == "set":
            assert node["items"]["type"] in ("string", "integer", "boolean"), path
        if "default" in node:  # the API server requires defaults to validate
            jsonschema.Draft7Validator(node).validate(node["default"])
        for rule in node.get("x-kubernetes-validations", []):
            assert set(rule) <= {"rule", "message", "messageExpression"} and rule["message"]


def test_strings_in_cel_rules_are_bounded() -> None:
    """The API server estimates a rule's cost from maxLength; unbounded strings blow it."""
    key = openapi_schema(KIND["ManagedKey"])["properties"]["spec"]["properties"]
    policy = openapi_schema(KIND["KeyPolicy"])["properties"]["spec"]["properties"]
    for node in (key["usage"], key["algorithm"], policy["deletionWindow"], policy["environment"]):
        assert node["maxLength"] <= 64


def test_crd_names_and_columns() -> None:
    policy, key, *_issuers = crds()
    assert policy["metadata"]["name"] == "keypolicies.qkms.io"
    assert policy["spec"]["scope"] == "Cluster"
    assert policy["spec"]["names"] == {
        "kind": "KeyPolicy", "listKind": "KeyPolicyList", "plural": "keypolicies",
        "singular": "keypolicy", "shortNames": ["kp"], "categories": ["qkms"]}
    assert key["spec"]["scope"] == "Namespaced"
    assert key["spec"]["names"]["shortNames"] == ["mk"]
    for crd in (policy, key):
        [version] = crd["spec"]["versions"]
        assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
        assert version["subresources"] == {"status": {}}
    columns = {c["name"]: (c["jsonPath"], c["type"])
               for c in key["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns["Version"] == (".status.currentVersion", "integer")
    assert columns["Ready"] == ('.status.conditions[?(@.type=="Ready")].status', "string")
    assert columns["Next-Rotation"] == (".status.nextRotation", "date")
    assert columns["Age"] == (".metadata.creationTimestamp", "date")
    assert {"Algorithm", "Provider"} <= set(columns)
    policy_columns = [c["name"] for c in policy["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert policy_columns == ["Environment", "Provider", "Keys", "Age"]


def test_printer_columns_point_into_the_schema() -> None:
    for kind in KINDS:
        schema = openapi_schema(kind)
        [version] = crd_of(kind)["spec"]["versions"]
        for column in version["additionalPrinterColumns"]:
            if column["jsonPath"].startswith(".metadata"):
                continue
            node = schema
            for part in re.sub(r"\[.*$", "", column["jsonPath"]).strip(".").split("."):
                node = node["properties"][part]
            if "[" not in column["jsonPath"]:
                want = {"integer": "integer", "date": "string", "string": "string"}
                assert node["type"] == want[column["type"]], column


def crd_of(kind: Any) -> dict[str, Any]:
    return next(c for c in crds() if c["spec"]["names"]["kind"] == kind.kind)


def test_defaults_come_from_the_models() -> None:
    spec = openapi_schema(KIND["KeyPolicy"])["properties"]["spec"]["properties"]
    schedule = spec["rotationSchedule"]["properties"]
    assert {u: schedule[u]["default"] for u in lifecycle.DEFAULT_ROTATION} == \
        lifecycle.DEFAULT_ROTATION
    assert spec["gracePeriod"]["default"] == lifecycle.DEFAULT_GRACE_PERIOD
    assert spec["deletionWindow"]["default"] == lifecycle.DEFAULT_DELETION_WINDOW
    assert spec["provider"]["default"] == {}
    assert "default" not in spec["auditPolicy"]["properties"]["failClosed"]


# -- patterns -------------------------------------------------------------------------------

def patterns() -> list[str]:
    found = [node["pattern"] for kind in KINDS for _, node in nodes(openapi_schema(kind))
             if "pattern" in node]
    found += [m for rule in all_rules() for m in re.findall(r"matches\('([^']*)'\)", rule)]
    return sorted(set(found))


@pytest.mark.parametrize("pattern", patterns())
def test_patterns_compile_in_re2(pattern: str) -> None:
    """The API server compiles patterns with Go's regexp (RE2): no lookaround."""
    import re2  # google-re2, with cel-python: a test dependency
    re2.compile(pattern)


_DURATION_TEXT = st.text(alphabet="PTYMWDHS0123456789.", max_size=14)


@given(st.one_of(_DURATION_TEXT, _DURATION_TEXT.map(lambda s: "P" + s)))
def test_crd_duration_pattern_matches_the_model_pattern(text: str) -> None:
    assert bool(re.match(CRD_DURATION_PATTERN, text)) == bool(re.match(DURATION_PATTERN, text))


@pytest.mark.parametrize("text", ["P30D", "PT5S", "P1Y2M3W4DT5H6M7.5S", "PT1M", "P1W", "P7Y",
                                  "P", "PT", "P1DT", "P1S", "PT1D", "30D", "P1.5D", "p30d"])
def test_crd_duration_pattern_examples(text: str) -> None:
    assert bool(re.match(CRD_DURATION_PATTERN, text)) == bool(re.match(DURATION_PATTERN, text))


# -- CEL rules ---------------------------------------------------------------------------------

def test_cel_rules_are_balanced() -> None:
    """A cheap syntax check that needs no CEL library: quotes and brackets pair up."""
    for rule in all_rules():
        assert rule.count("'") % 2 == 0, rule
        unquoted = re.sub(r"'[^']*'", "''", rule)
        for open_, close in ("()", "[]"):
            assert unquoted.count(open_) == unquoted.count(close), rule


def test_cel_rules_compile() -> None:
    for rule in all_rules():
        program(rule)


def test_algorithm_rule_follows_the_registry() -> None:
    """Every spelling of every algorithm, for every usage: CEL agrees with the registry."""
    rule = algorithm_rule()
    for info in ALGORITHMS:
        for spelling in (info.name, *info.aliases):
            for usage in Usage:
                allowed = holds(rule, {"usage": usage.value, "algorithm": spelling})
                assert allowed == (usage in info.usages), (spelling, usage)
    assert holds(rule, {"usage": "SIGNING"})  # no algorithm: the policy picks one
    assert not holds(rule, {"usage": "SIGNING", "algorithm": "RSA-1024"})


@pytest.mark.parametrize("days", range(0, 100))
def test_deletion_window_rule_matches_lifecycle_bounds(days: int) -> None:
    rule = f"self.matches('{DELETION_WINDOW_PATTERN}')"
    inside = lifecycle.DELETION_WINDOW_MIN_DAYS <= days <= lifecycle.DELETION_WINDOW_MAX_DAYS
    assert holds(rule, f"P{days}D") == inside
    assert not holds(rule, f"P0{days}D")  # one spelling per length: no leading zeros


def managed_key(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
            "metadata": {"name": "k", "namespace": "ns"},
            "spec": {"usage": "SIGNING", "owner": "team-a", **spec}}


def test_usage_is_immutable_but_algorithm_may_migrate() -> None:
    old = managed_key(algorithm="Ed25519")
    assert admit(managed_key(algorithm="ML-DSA-65"), old) == []
    assert admit(managed_key(usage="AUTHENTICATION"), old) == [
        "usage is immutable; create a new ManagedKey"]


def test_revocation_is_permanent() -> None:
    revoked = managed_key(revoked={"reason": "leaked"})
    assert admit(revoked, managed_key()) == []
    assert admit(managed_key(), revoked) == [
        "revocation is permanent: spec.revoked cannot be removed"]


def test_policy_environment_is_immutable() -> None:
    def policy(environment: str) -> dict[str, Any]:
        return {"kind": "KeyPolicy", "metadata": {"name": "p"},
                "spec": {"environment": environment}}

    assert admit(policy("prod"), policy("prod")) == []
    assert admit(policy("dev"), policy("prod")) == [
        "environment is immutable; create a new KeyPolicy"]


def test_grace_period_rule_is_documented_not_in_cel() -> None:
    """The decision: CEL cannot read ISO 8601 durations, so the operator checks it."""
    key = crd_of(KIND["ManagedKey"])
    grace = key["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"]["gracePeriod"]
    assert "operator checks" in grace["description"]
    assert not any("gracePeriod" in rule for rule in all_rules())
    assert "gracePeriod < rotationSchedule is enforced by the operator" in render_crds()


# -- files --------------------------------------------------------------------------------------

def test_crds_folder_is_up_to_date() -> None:
    for kind in KINDS:
        path = REPO / "crds" / file_name(kind)
        assert path.exists() and path.read_text(encoding="utf-8") == render_crd(kind), (
            f"crds/{path.name} is out of date with the models: run `qkms crds --write crds/`")
    files = [(REPO / "crds" / file_name(kind)).read_text(encoding="utf-8") for kind in KINDS]
    assert "---\n".join(files) == render_crds()


def test_write_crds(tmp_path: Path) -> None:
    written = write_crds(tmp_path / "out")
    assert [p.name for p in written] == ["keypolicies.qkms.io.yaml", "managedkeys.qkms.io.yaml",
                                         "keyissuers.qkms.io.yaml",
                                         "clusterkeyissuers.qkms.io.yaml"]
    assert list(yaml.safe_load_all(render_crds())) == crds()
    assert [yaml.safe_load(p.read_text()) for p in written] == crds()
