"""Generated resources: hypothesis builds ManagedKey and KeyPolicy bodies, mostly bad ones.

Each body starts valid and gets up to three mutations: wrong types, missing fields, huge
strings, unicode, bad durations, unknown algorithms, unknown fields, and conflicts (grace not
shorter than the schedule, an algorithm outside the usage, a PQC algorithm under a policy
that disables PQC, one outside allowedAlgorithms, spec.environment against the namespace's
label, a policyRef to another environment's policy or to none).

KeyPolicy bodies go through ``parse_key_policy``: each parses or is refused with an
``InvalidInputError`` naming the field. ManagedKey bodies go through what the operator runs
(``OperatorRuntime.reconcile``: ``parse_managed_key``, else the refusal it reports, then
``KeyReconciler.reconcile`` on a ``ServiceRegistry``), and each must end Ready, or
Ready=False with reason InvalidSpec or EnvironmentMismatch and a message that starts with
the field (``spec.…`` or ``metadata.…``). Nothing may escape as an exception, a refused
resource leaves no key behind, and no status or Event carries a traceback.

A smaller run posts generated bodies to the real kube-apiserver for the real operator
process: what the CRD's schema and CEL rules refuse comes back as a 422 naming the field
and never reaches the operator; the rest (defaulted and pruned by the server) is what the
operator sees.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from qkms.config import Settings
from qkms.errors import InvalidInputError
from qkms.k8s.runtime import _shell
from qkms.model.algorithms import ALGORITHMS
from qkms.model.enums import Usage
from qkms.model.managed_key import parse_managed_key
from qkms.model.policy import KeyPolicy, parse_key_policy
from qkms.reconcile.reconciler import KeyReconciler, Outcome
from qkms.reconcile.registry import ServiceRegistry
from tests.support.kubeclient import KubeClient, KubeError, eventually
from tests.support.operator_process import OperatorProcess
from tests.support.server_process import free_port

API_VERSION = "qkms.io/v1alpha1"
FIELD_RE = re.compile(r"^(spec|metadata)(\.[A-Za-z_]+|\[[^\]]*\])*(?=:)")
TRACEBACK = ("Traceback", 'File "')
REFUSALS = {"InvalidSpec", "EnvironmentMismatch"}
GENERATED_MANAGED_KEYS = int(os.environ.get("QKMS_RELIABILITY_GENERATED", "520"))
GENERATED_POLICIES = 300
OPERATOR_BODIES = 30

NAMESPACES: dict[str, dict[str, str] | None] = {
    "team-dev": {"qkms.io/environment": "dev"},
    "team-staging": {"qkms.io/environment": "staging"},
    "team-prod": {"qkms.io/environment": "prod"},
    "no-label": {},
    "bad-label": {"qkms.io/environment": "qa"},
    "unknown": None,  # standalone: a namespace no manifest declares takes the default
}
ENV_OF = {"team-dev": "dev", "team-staging": "staging", "team-prod": "prod"}
FIXED_POLICIES = {
    "dev": {"environment": "dev"},
    "staging": {"environment": "staging"},
    "prod": {"environment": "prod"},
    "dev-classical": {"environment": "dev", "pqcPolicy": {"enabled": False}},
    "dev-restricted": {"environment": "dev",
                       "allowedAlgorithms": ["Ed25519", "AES-256-GCM", "HKDF-SHA256"]},
}
SERVING = {u.value: [a.name for a in ALGORITHMS if u in a.usages] for u in Usage}
SLOW = {"RSA-4096"}  # half a second per key: kept out of specs that would be created
CREATABLE = {u: [a for a in names if a not in SLOW] for u, names in SERVING.items()}
PQC = {a.name for a in ALGORITHMS if a.post_quantum or a.hybrid}
SPELLINGS = [n for a in ALGORITHMS if a.name not in SLOW for n in (a.name, *a.aliases)]
STRING_FIELDS = ["usage", "algorithm", "owner", "environment", "policyRef",
                 "rotationSchedule", "gracePeriod", "deletionPolicy"]
OBJECT_FIELDS = ["projection", "rotationRequest", "revoked", "importFrom"]
BAD_DURATIONS = ["P", "PT", "30D", "P30", "P-1D", "PT-5S", "P0D", "PT0S", "P1Q", "P1.5D",
                 "p30d", "P30D ", "P 30D", "PT0.0000001S", "P99999999999999999999D",
                 "P9999999999Y", "PT99999999999999999999H", "P1Y2M3W4DT5H6M7.5S8", "∞", ""]
UNKNOWN_ALGORITHMS = ["RSA-1024", "Kyber999", "ML-DSA-66", "AES-128-GCM", "ed25519",
                      "Ed25519 ", "Falcon", "SPHINCS+", "X-Wing-2", "", "None", "null"]


def _junk(*, allow_nan: bool = True) -> st.SearchStrategy[Any]:
    return st.one_of(st.integers(min_value=-2**70, max_value=2**70),
                     st.floats(allow_nan=allow_nan, allow_infinity=allow_nan),
                     st.booleans(), st.none(), st.lists(st.integers(), max_size=3),
                     st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


UNICODE = st.text(min_size=1, max_size=40)
HUGE = st.builds(lambda piece, times: piece * times, st.text(min_size=1, max_size=4),
                 st.integers(min_value=2_000, max_value=40_000))


# -- ManagedKey bodies ---------------------------------------------------------------------

@dataclass
class Case:
    body: dict[str, Any]
    labels: dict[str, str] | None
    mutations: list[str]
    policy: dict[str, Any] | None = None  # a generated KeyPolicy the key may refer to


Mutate = Callable[[st.DrawFn, dict[str, Any]], None]


def _spec(body: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(body.get("spec"), dict):
        body["spec"] = {}
    return body["spec"]


def m_missing(draw: st.DrawFn, body: dict[str, Any]) -> None:
    target = draw(st.sampled_from(["usage", "owner", "spec", "projection.secretName"]))
    if target == "spec":
        body.pop("spec", None)
    elif target == "projection.secretName":
        _spec(body)["projection"] = {"formats": ["PEM"]}
    else:
        _spec(body).pop(target, None)


def m_wrong_type(draw: st.DrawFn, body: dict[str, Any]) -> None:
    name = draw(st.sampled_from(STRING_FIELDS + OBJECT_FIELDS + ["spec"]))
    allow_nan = draw(st.booleans())
    value = draw(_junk(allow_nan=allow_nan).filter(lambda v: v is not None or name in
                                                    ("usage", "owner", "spec")))
    if name in OBJECT_FIELDS:
        value = draw(st.one_of(st.text(max_size=10), st.integers(), st.lists(st.text(),
                                                                            max_size=2)))
    if name == "spec":
        body["spec"] = value if not isinstance(value, dict) else [value]
    else:
        _spec(body)[name] = value


def m_huge(draw: st.DrawFn, body: dict[str, Any]) -> None:
    _spec(body)[draw(st.sampled_from(STRING_FIELDS))] = draw(HUGE)


def m_unicode(draw: st.DrawFn, body: dict[str, Any]) -> None:
    _spec(body)[draw(st.sampled_from(STRING_FIELDS))] = draw(UNICODE)


def m_bad_duration(draw: st.DrawFn, body: dict[str, Any]) -> None:
    value = draw(st.one_of(st.sampled_from(BAD_DURATIONS), UNICODE))
    _spec(body)[draw(st.sampled_from(["rotationSchedule", "gracePeriod"]))] = value


def m_unknown_algorithm(draw: st.DrawFn, body: dict[str, Any]) -> None:
    _spec(body)["algorithm"] = draw(st.one_of(st.sampled_from(UNKNOWN_ALGORITHMS), UNICODE))


def m_usage_mismatch(draw: st.DrawFn, body: dict[str, Any]) -> None:
    spec = _spec(body)
    usage = spec["usage"] if str(spec.get("usage")) in SERVING else "SIGNING"
    spec["usage"] = usage
    spec["algorithm"] = draw(st.sampled_from(
        sorted(a.name for a in ALGORITHMS if a.name not in SERVING[usage])))


def m_grace_not_shorter(draw: st.DrawFn, body: dict[str, Any]) -> None:
    schedule, grace = draw(st.sampled_from([("P1D", "P1D"), ("P1D", "P2D"), ("PT10S", "PT1M"),
                                            ("P30D", "P1M"), ("P7D", "P1W"), ("PT1H", "P1D")]))
    spec = _spec(body)
    spec["rotationSchedule"], spec["gracePeriod"] = schedule, grace


def m_environment_mismatch(draw: st.DrawFn, body: dict[str, Any]) -> None:
    namespace = body["metadata"]["namespace"]
    other = [e for e in ("dev", "staging", "prod") if e != ENV_OF.get(namespace)]
    _spec(body)["environment"] = draw(st.sampled_from(other))


def m_policy_other_environment(draw: st.DrawFn, body: dict[str, Any]) -> None:
    namespace = body["metadata"]["namespace"]
    _spec(body)["policyRef"] = draw(st.sampled_from(
        [n for n, p in FIXED_POLICIES.items() if p["environment"] != ENV_OF.get(namespace)]))


def m_policy_missing(draw: st.DrawFn, body: dict[str, Any]) -> None:
    _spec(body)["policyRef"] = draw(st.sampled_from(["nope", "dev-", "policy-of-nobody"]))


def m_pqc_disabled(draw: st.DrawFn, body: dict[str, Any]) -> None:
    body["metadata"]["namespace"] = "team-dev"
    spec = _spec(body)
    usage = draw(st.sampled_from(["SIGNING", "AUTHENTICATION", "ENCRYPTION", "TRANSPORT"]))
    spec.update(usage=usage, policyRef="dev-classical",
                algorithm=draw(st.sampled_from(sorted(PQC & set(SERVING[usage])))))


def m_not_allowed(draw: st.DrawFn, body: dict[str, Any]) -> None:
    body["metadata"]["namespace"] = "team-dev"
    spec = _spec(body)
    usage = draw(st.sampled_from(sorted(SERVING)))
    allowed = set(FIXED_POLICIES["dev-restricted"]["allowedAlgorithms"])
    outside = sorted(set(SERVING[usage]) - allowed)
    spec.update(usage=usage, policyRef="dev-restricted")
    if outside and draw(st.booleans()):
        spec["algorithm"] = draw(st.sampled_from(outside))
    else:  # no algorithm: the policy must find one for the usage, or say it cannot
        spec.pop("algorithm", None)


def m_unknown_field(draw: st.DrawFn, body: dict[str, Any]) -> None:
    where = draw(st.sampled_from(["spec", "projection", "revoked"]))
    key = draw(st.sampled_from(["algorithms", "Usage", "rotation_schedule", "x", "ownerRef"]))
    spec = _spec(body)
    if where == "spec":
        spec[key] = draw(st.one_of(st.text(max_size=8), st.integers()))
    elif where == "projection":
        spec["projection"] = {"secretName": "pub", key: "yes"}
    else:
        spec["revoked"] = {"reason": "because", key: 1}


def m_projection_junk(draw: st.DrawFn, body: dict[str, Any]) -> None:
    _spec(body)["projection"] = draw(st.sampled_from([
        {}, {"formats": ["PNG"]}, {"secretName": "Bad_Name"}, {"configMapName": ""},
        {"secretName": "ok", "formats": "PEM"}, {"secretName": "x" * 300},
        {"secretName": "ok", "formats": ["PEM", None]}]))


def m_request_junk(draw: st.DrawFn, body: dict[str, Any]) -> None:
    name, value = draw(st.sampled_from([
        ("rotationRequest", {"token": ""}), ("rotationRequest", {"token": "t", "reason": "LATER"}),
        ("rotationRequest", {"reason": "MANUAL"}), ("rotationRequest", {"token": " "}),
        ("revoked", {}), ("revoked", {"reason": ""}), ("revoked", {"reason": "  "}),
        ("deletionPolicy", "Destroy"), ("deletionPolicy", "retain"),
        ("importFrom", {"secretName": ""}), ("importFrom", {"key": "k"})]))
    _spec(body)[name] = value


def m_enum_junk(draw: st.DrawFn, body: dict[str, Any]) -> None:
    name = draw(st.sampled_from(["usage", "environment", "deletionPolicy"]))
    _spec(body)[name] = draw(st.sampled_from(["SIGN", "qa", "Production", "signing ", "DEV", "*"]))


def m_annotation_junk(draw: st.DrawFn, body: dict[str, Any]) -> None:
    reason = draw(st.one_of(st.sampled_from(["LATER", "compromised", "ROTATE", "1"]), UNICODE))
    body["metadata"]["annotations"] = {"qkms.io/rotate": reason}


def m_metadata_junk(draw: st.DrawFn, body: dict[str, Any]) -> None:
    """What ``qkms serve`` reads from a hand-written YAML (a cluster would refuse these)."""
    meta = body["metadata"]
    name, value = draw(st.sampled_from([
        ("generation", "one"), ("generation", [1]), ("annotations", ["qkms.io/rotate"]),
        ("annotations", "x"), ("labels", 5), ("name", "Bad Name"), ("name", "UPPER"),
        ("name", "a" * 300), ("uid", {"x": 1}), ("annotations", {"qkms.io/rotate": 7})]))
    if name == "name":
        value = f"{value}-{meta['name']}"
    meta[name] = value


MUTATIONS: dict[str, Mutate] = {
    "missing": m_missing, "wrong_type": m_wrong_type, "huge": m_huge, "unicode": m_unicode,
    "bad_duration": m_bad_duration, "unknown_algorithm": m_unknown_algorithm,
    "usage_mismatch": m_usage_mismatch, "grace_not_shorter": m_grace_not_shorter,
    "environment_mismatch": m_environment_mismatch,
    "policy_other_environment": m_policy_other_environment, "policy_missing": m_policy_missing,
    "pqc_disabled": m_pqc_disabled, "not_allowed": m_not_allowed,
    "unknown_field": m_unknown_field, "projection_junk": m_projection_junk,
    "request_junk": m_request_junk, "enum_junk": m_enum_junk,
    "annotation_junk": m_annotation_junk, "metadata_junk": m_metadata_junk,
}
CLUSTER_SAFE = [m for m in MUTATIONS if m != "metadata_junk"]  # the API server checks those


@st.composite
def valid_spec(draw: st.DrawFn) -> dict[str, Any]:
    usage = draw(st.sampled_from(sorted(SERVING)))
    spec: dict[str, Any] = {"usage": usage, "owner": draw(st.sampled_from(
        ["payments", "team-a", "Ünïcødé team", "svc/with/slashes"]))}
    if draw(st.integers(0, 4)):
        spec["algorithm"] = draw(st.sampled_from(CREATABLE[usage]))
    if draw(st.booleans()):
        spec["rotationSchedule"], spec["gracePeriod"] = draw(st.sampled_from(
            [("P30D", "P7D"), ("PT1H", "PT5M"), ("P1Y", "P1M"), ("P7D", None), ("P2W", "P1D")]))
        if spec["gracePeriod"] is None:
            del spec["gracePeriod"]
    if draw(st.booleans()):
        spec["projection"] = draw(st.sampled_from([
            {"secretName": "pub"}, {"configMapName": "ref", "formats": ["RAW"]},
            {"secretName": "pub", "configMapName": "ref", "formats": ["PEM", "JWKS", "RAW"]}]))
    if draw(st.booleans()):
        spec["deletionPolicy"] = draw(st.sampled_from(["Retain", "Delete"]))
    if draw(st.integers(0, 5)) == 0:
        spec["rotationRequest"] = {"token": "ticket-1", "reason": "MANUAL"}
    return spec


def managed_key_cases(mutations: list[str], ids: Iterator[int]) -> st.SearchStrategy[Case]:
    @st.composite
    def build(draw: st.DrawFn) -> Case:
        namespace = draw(st.sampled_from(sorted(NAMESPACES)))
        body = {"apiVersion": API_VERSION, "kind": "ManagedKey",
                "metadata": {"name": f"gen-{next(ids)}", "namespace": namespace,
                             "generation": 1, "uid": f"uid-{draw(st.uuids())}"},
                "spec": draw(valid_spec())}
        chosen = draw(st.lists(st.sampled_from(mutations), max_size=3, unique=True))
        for name in chosen:
            MUTATIONS[name](draw, body)
        policy = None
        if draw(st.integers(0, 5)) == 0:  # refer to a generated policy (valid or not)
            policy = draw(key_policy_bodies(ids, local_only=True))
            _spec(body)["policyRef"] = policy["metadata"]["name"]
            chosen.append("generated_policy")
        labels = NAMESPACES[body["metadata"]["namespace"]]
        return Case(body, dict(labels) if labels is not None else None, chosen, policy)
    return build()


# -- KeyPolicy bodies ----------------------------------------------------------------------

POLICY_MUTATIONS: list[tuple[str, Any]] = [
    ("spec", None), ("spec.environment", None), ("spec.environment", "qa"),
    ("spec.environment", 3), ("spec.provider", "LOCAL_DEV"), ("spec.provider.type", "GCP_KMS"),
    ("spec.provider.settings", {"token": "s.abc"}), ("spec.provider.settings", {"hsmPin": "1"}),
    ("spec.provider.settings", {"clientSecret": "x"}), ("spec.provider.settings", {"slot": 1}),
    ("spec.provider.settings", ["address"]),
    ("spec.provider.credentialsSecretRef", {"name": "Bad Name"}),
    ("spec.rotationSchedule", ["P30D"]), ("spec.rotationSchedule.SIGNING", "30 days"),
    ("spec.rotationSchedule.TRANSPORT", "P0D"), ("spec.rotationSchedule.signing", "P1D"),
    ("spec.gracePeriod", 7), ("spec.gracePeriod", "P-7D"), ("spec.deletionWindow", "P5D"),
    ("spec.deletionWindow", "P31D"), ("spec.deletionWindow", "P1M"),
    ("spec.deletionWindow", "P30DT1H"), ("spec.deletionWindow", "P99999999999999D"),
    ("spec.allowedAlgorithms", ["RSA-1024"]), ("spec.allowedAlgorithms", "Ed25519"),
    ("spec.allowedAlgorithms", [None]), ("spec.allowedAlgorithms", ["Ed25519"]),
    ("spec.allowedAlgorithms", ["AES-256-GCM"]), ("spec.allowedAlgorithms", []),
    ("spec.pqcPolicy.enabled", "maybe"), ("spec.pqcPolicy.enabled", False),
    ("spec.pqcPolicy.hybridMode", True), ("spec.pqcPolicy.migrationDeadline", "2030-01-01"),
    ("spec.pqcPolicy.migrationDeadline", "2030-01-01T00:00:00"),
    ("spec.pqcPolicy.migrationDeadline", "soon"),
    ("spec.pqcPolicy.preferredAlgorithms.signing", ["AES-256-GCM"]),
    ("spec.pqcPolicy.preferredAlgorithms.encryption", ["Kyber999"]),
    ("spec.pqcPolicy.preferredAlgorithms.keyDerivation", ["HKDF"]),
    ("spec.auditPolicy.ipfsEndpoint", "ftp://ipfs"), ("spec.auditPolicy.checkpointEvery", 0),
    ("spec.auditPolicy.checkpointEvery", "many"), ("spec.auditPolicy.enabled", False),
    ("spec.auditPolicy.retentionPeriod", "forever"), ("spec.backupPolicy", True),
    ("spec.backupPolicy.retentionPeriod", "P7Y"), ("spec.unknown", 1), ("spec.provider.x", 1),
]


def _set(body: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = body
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    if value is None:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value


def key_policy_bodies(ids: Iterator[int], *, local_only: bool = False
                      ) -> st.SearchStrategy[dict[str, Any]]:
    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        body: dict[str, Any] = {"apiVersion": API_VERSION, "kind": "KeyPolicy",
                                "metadata": {"name": f"gen-policy-{next(ids)}", "generation": 1},
                                "spec": {"environment": draw(st.sampled_from(
                                    ["dev", "staging", "prod"]))}}
        for path, value in draw(st.lists(st.sampled_from(POLICY_MUTATIONS), max_size=4)):
            _set(body, path, value)
        extra = draw(st.integers(0, 3))
        if extra == 1:
            _set(body, draw(st.sampled_from(["spec.gracePeriod", "spec.environment",
                                             "spec.rotationSchedule.SIGNING",
                                             "spec.allowedAlgorithms"])),
                 draw(st.one_of(UNICODE, HUGE, _junk())))
        elif extra == 2:
            _set(body, draw(st.sampled_from(["spec.gracePeriod",
                                             "spec.rotationSchedule.ENCRYPTION"])),
                 draw(st.sampled_from(BAD_DURATIONS)))
        if local_only and isinstance(body.get("spec"), dict) and \
                isinstance(body["spec"].get("provider"), dict):
            body["spec"]["provider"]["type"] = "LOCAL_DEV"  # no network in this test
        return body
    return build()


# -- checks ------------------------------------------------------------------------------

@dataclass
class Tally:
    total: int = 0
    ready: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    policies: int = 0
    policies_accepted: int = 0
    policies_rejected: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        fields = dict(sorted((self.rejected + self.policies_rejected).items()))
        rejected = sum(self.rejected.values()) + sum(self.policies_rejected.values())
        return (f"generated resources: {self.total + self.policies} "
                f"(ready {self.ready + self.policies_accepted}, rejected {rejected} by field: "
                f"{fields}); ManagedKeys {self.total} (ready {self.ready}), "
                f"KeyPolicies {self.policies} (accepted {self.policies_accepted})")


TALLY = Tally()


def field_of(message: str) -> str | None:
    """The field a refusal names, as ``spec.a.b`` without list indices or map keys."""
    match = FIELD_RE.match(message)
    if match is None:
        return None
    return re.sub(r"\[[^\]]*\]", "", match.group(0))


def no_traceback(*texts: str) -> None:
    for text in texts:
        for marker in TRACEBACK:
            assert marker not in text, f"a traceback leaked: {text[:500]}"


def ready_condition(status: dict[str, Any]) -> dict[str, Any]:
    found = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    assert len(found) == 1, f"no single Ready condition in {status}"
    return found[0]


def check_policy(body: dict[str, Any]) -> KeyPolicy | None:
    TALLY.policies += 1
    try:
        policy = parse_key_policy(body)
    except InvalidInputError as exc:
        assert exc.field and str(exc).startswith(f"{exc.field}: "), str(exc)
        assert exc.field == "body" or FIELD_RE.match(str(exc)), str(exc)
        no_traceback(str(exc))
        TALLY.policies_rejected[field_of(str(exc)) or exc.field] += 1
        return None
    TALLY.policies_accepted += 1
    return policy


# -- the direct run: the operator's reconcile code on one registry -------------------------

@dataclass
class World:
    runner: asyncio.Runner
    registry: ServiceRegistry
    reconciler: KeyReconciler
    policies: list[KeyPolicy]

    async def reconcile(self, body: dict[str, Any], labels: dict[str, str] | None,
                        policies: list[KeyPolicy]) -> Outcome:
        """What ``OperatorRuntime.reconcile`` does with a body, minus the API writes."""
        try:
            mk = parse_managed_key(body)
        except InvalidInputError as exc:
            return self.reconciler._refused(_shell(body), "InvalidSpec", str(exc),
                                            self.reconciler.clock())
        return await self.reconciler.reconcile(mk, labels, policies)

    def key_exists(self, name: str) -> bool:
        return any(s.catalog.get(name) is not None for s in self.registry.all())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    data = tmp_path_factory.mktemp("generated")
    registry = ServiceRegistry(Settings(data_dir=data, key_cache_seconds=0))
    policies = [parse_key_policy({"apiVersion": API_VERSION, "kind": "KeyPolicy",
                                  "metadata": {"name": name}, "spec": spec})
                for name, spec in FIXED_POLICIES.items()]
    with asyncio.Runner() as runner:
        yield World(runner, registry, KeyReconciler(registry), policies)


def check_outcome(world: World, case: Case, outcome: Outcome) -> str:
    """Assert the invariants for one reconciled body; returns ``ready`` or the field."""
    status = outcome.status.model_dump(mode="json", by_alias=True)  # as the runtime patches it
    messages = [e.message for e in outcome.events]
    no_traceback(json.dumps(status, ensure_ascii=False), *messages,
                 *(e.reason for e in outcome.events))
    ready = ready_condition(status)
    meta = case.body["metadata"]
    name = f"{meta.get('namespace') or 'default'}/{meta.get('name')}"
    if ready["status"] == "True":
        assert world.key_exists(name), f"Ready without a key: {case.mutations}"
        assert status["keyId"] and status["observedGeneration"] == meta.get("generation")
        return "ready"
    assert ready["reason"] in REFUSALS, (case.mutations, ready)
    assert not outcome.retry, (case.mutations, ready)
    found = field_of(ready["message"])
    assert found, f"the refusal names no field: {ready['message']!r} ({case.mutations})"
    assert not world.key_exists(name), f"a refused resource left a key: {case.mutations}"
    assert any(e.type == "Warning" and e.reason == ready["reason"] for e in outcome.events)
    assert status["phase"] == "Failed"
    return found


def test_generated_resources_become_ready_or_are_refused_naming_the_field(world: World) -> None:
    ids = itertools.count()

    @settings(max_examples=GENERATED_POLICIES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(body=key_policy_bodies(ids))
    def policies(body: dict[str, Any]) -> None:
        check_policy(body)

    @settings(max_examples=GENERATED_MANAGED_KEYS, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=managed_key_cases(list(MUTATIONS), ids))
    def managed_keys(case: Case) -> None:
        TALLY.total += 1
        policies = list(world.policies)
        if case.policy is not None:
            extra = check_policy(case.policy)
            if extra is not None:
                policies.append(extra)
        outcome = world.runner.run(world.reconcile(case.body, case.labels, policies))
        result = check_outcome(world, case, outcome)
        if result == "ready":
            TALLY.ready += 1
        else:
            TALLY.rejected[result] += 1

    policies()
    managed_keys()
    print(TALLY.line())
    assert TALLY.total + TALLY.policies >= 500
    assert TALLY.ready > 0 and sum(TALLY.rejected.values()) > 0
    assert len(TALLY.rejected) >= 8  # the refusals really name many different fields


def test_known_conflicts_are_each_refused_naming_the_field(world: World) -> None:
    """The conflicts the issue names, one each, so none is left to the generator's luck."""
    def body(name: str, namespace: str = "team-dev", **spec: Any) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": "ManagedKey",
                "metadata": {"name": name, "namespace": namespace, "generation": 1},
                "spec": {"usage": "SIGNING", "owner": "o", **spec}}

    cases = {
        "spec.gracePeriod": body("c-grace", rotationSchedule="P1D", gracePeriod="P1D"),
        "spec.algorithm": body("c-pqc-off", algorithm="ML-DSA-65", policyRef="dev-classical"),
        "spec.policyRef": body("c-policy-env", policyRef="prod"),
        "spec.environment": body("c-env", environment="prod"),
        "spec.usage": body("c-usage", usage="SIGN"),
        "spec.rotationSchedule": body("c-duration", rotationSchedule="30 days"),
        "spec.owner": body("c-owner", owner="bad\x00owner"),
    }
    allowed = body("c-allowed", algorithm="ML-DSA-65", policyRef="dev-restricted")
    for wanted, item in [*cases.items(), ("spec.algorithm", allowed)]:
        outcome = world.runner.run(world.reconcile(item, {"qkms.io/environment": "dev"},
                                                   world.policies))
        case = Case(item, {"qkms.io/environment": "dev"}, [wanted])
        assert check_outcome(world, case, outcome) == wanted, outcome.status.conditions


# -- the real operator against the real API server ---------------------------------------------

def generated_bodies(count: int, ids: Iterator[int]) -> list[dict[str, Any]]:
    """``count`` generated ManagedKey bodies (cluster-possible metadata, JSON-safe values),
    named ``op-N`` from `ids`."""
    found: list[dict[str, Any]] = []
    case_ids = itertools.count()

    @settings(max_examples=count, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=managed_key_cases(CLUSTER_SAFE, case_ids))
    def collect(case: Case) -> None:
        if case.policy is None and case.labels is not None and len(found) < count:
            text = json.dumps(case.body, allow_nan=False, default=str)
            found.append(json.loads(text))
            found[-1]["metadata"]["name"] = f"op-{next(ids)}"

    while len(found) < count:
        collect()
    return found


async def create_or_refused(kube: KubeClient, resource: str, body: dict[str, Any]
                            ) -> str | None:
    """Create `body`; None if the server admitted it, else the field its schema or CEL
    rules refused. A refusal must be a 422 naming a field of the spec or metadata (the
    first), with no traceback."""
    try:
        await kube.create(resource, body, (body.get("metadata") or {}).get("namespace"))
        return None
    except KubeError as exc:
        assert exc.status == 422, (exc.status, exc.body)
        no_traceback(json.dumps(exc.body, ensure_ascii=False))
        causes = ((exc.body or {}).get("details") or {}).get("causes") or []
        # "<nil>": the server's note that CEL rules were skipped on an already invalid object.
        fields = [f for c in causes if (f := c.get("field", "")) != "<nil>"]
        assert fields and all(re.match(r"^(spec|metadata)\b", f) for f in fields), exc.body
        return str(fields[0])


@pytest.mark.server
async def test_operator_survives_generated_bodies_on_the_api_server(
        kube: KubeClient, operator_kubeconfig: Path, tmp_path: Path) -> None:
    """Generated bodies go to the real kube-apiserver: what its CRD schema and CEL rules
    refuse never reaches the operator (a 422 naming the field); generation continues until
    ``OPERATOR_BODIES`` generated bodies were admitted, so the operator (logged in as its
    own ServiceAccount) sees as many as before, with whatever junk the schema lets through."""
    for name, labels in NAMESPACES.items():
        if name == "unknown":
            continue
        await kube.create("namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                         "metadata": {"name": name, "labels": labels or {}}})
    bad_policies = {"bad-window": {"environment": "dev", "deletionWindow": "P1D"},
                    "bad-env": {"environment": "qa"}, "bad-type": "LOCAL_DEV",
                    "bad-credentials": {"environment": "prod",
                                        "provider": {"settings": {"vaultToken": "s.x"}}}}
    server_refused: Counter[str] = Counter()
    admitted_policies = []
    for name, spec in {**FIXED_POLICIES, **bad_policies}.items():
        refused = await create_or_refused(kube, "keypolicies", {
            "apiVersion": API_VERSION, "kind": "KeyPolicy", "metadata": {"name": name},
            "spec": spec})
        assert refused is None or name in bad_policies, (name, refused)
        if refused is None:
            admitted_policies.append(name)
        else:
            server_refused[f"KeyPolicy {refused}"] += 1
    operator = OperatorProcess(
        "qkms.k8s.handlers", kubeconfig=operator_kubeconfig, workdir=tmp_path / "op",
        env={"QKMS_NAMESPACE": "qkms-system", "QKMS_STATE": "secrets", "QKMS_DATA_DIR": "data",
             "QKMS_API_LISTEN": f"127.0.0.1:{free_port()}"})
    # A user's own Secret, and a key asking to project into it: qkms must not overwrite it.
    users = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
             "metadata": {"name": "pub", "namespace": "team-dev"},
             "data": {"password": "aHVudGVyMg=="}}
    await kube.create("secrets", users, "team-dev")
    handmade: list[dict[str, Any]] = []
    for index, spec in enumerate([12345, ["usage"], "SIGNING", None, {"projection": "pub"},
                                  {"usage": "SIGNING", "owner": "x", "projection": ["pub"]}]):
        handmade.append({"apiVersion": API_VERSION, "kind": "ManagedKey",
                         "metadata": {"name": f"junk-{index}", "namespace": "team-dev"},
                         **({} if spec is None else {"spec": spec})})
    handmade.append({"apiVersion": API_VERSION, "kind": "ManagedKey",
                     "metadata": {"name": "hijack", "namespace": "team-dev"},
                     "spec": {"usage": "SIGNING", "algorithm": "Ed25519", "owner": "x",
                              "projection": {"secretName": "pub"}}})
    bodies: list[dict[str, Any]] = []
    generated = 0
    ids = itertools.count(1)
    try:
        await operator.start()
        for body in handmade:
            refused = await create_or_refused(kube, "managedkeys", body)
            if refused is None:
                bodies.append(body)
            else:
                server_refused[refused] += 1
        admitted = 0
        while admitted < OPERATOR_BODIES:
            assert generated < 20 * OPERATOR_BODIES, f"only {admitted} of {generated} admitted"
            for body in generated_bodies(OPERATOR_BODIES, ids):
                generated += 1
                refused = await create_or_refused(kube, "managedkeys", body)
                if refused is None:
                    bodies.append(body)
                    admitted += 1
                else:
                    server_refused[refused] += 1
                if admitted == OPERATOR_BODIES:
                    break

        async def settled() -> dict[str, dict[str, Any]] | None:
            seen = {}
            for body in bodies:
                meta = body["metadata"]
                current = await kube.get("managedkeys", meta["name"], meta["namespace"])
                conditions = {c["type"]: c for c in
                              ((current or {}).get("status") or {}).get("conditions") or []}
                if "Ready" not in conditions:
                    return None
                seen[f"{meta['namespace']}/{meta['name']}"] = current
            return seen

        final = await eventually(settled, timeout=90, interval=0.5,
                                 what="every admitted ManagedKey has a Ready condition",
                                 context=operator.log_tail)
        assert operator.running, operator.log_tail()
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{operator.liveness_port}/healthz") as rsp:
                assert rsp.status == 200
        outcomes: Counter[str] = Counter()
        for ident, current in final.items():
            ready = ready_condition(current["status"])
            no_traceback(json.dumps(current["status"], ensure_ascii=False))
            if ready["status"] == "True":
                outcomes["ready"] += 1
                continue
            if ready["reason"] == "KeyRevoked" and (current["spec"].get("revoked") or {}).get(
                    "reason"):  # the API server pruned the junk beside a real revocation
                outcomes["revoked as asked"] += 1
                continue
            assert ready["reason"] in REFUSALS, (ident, ready)
            found = field_of(ready["message"])
            assert found, (ident, ready["message"])
            outcomes[found] += 1
        events = []
        for namespace in {b["metadata"]["namespace"] for b in bodies}:
            events += await kube.list("events", namespace)
        no_traceback(*(json.dumps(e, ensure_ascii=False) for e in events))
        assert (await kube.get("secrets", "pub", "team-dev"))["data"] == users["data"]

        async def policies_reported() -> dict[str, dict[str, Any]] | None:
            found = {}
            for name in admitted_policies:
                status = (await kube.get("keypolicies", name) or {}).get("status") or {}
                if not status.get("conditions"):
                    return None
                found[name] = ready_condition(status)
            return found
        policies = await eventually(policies_reported, timeout=30, interval=0.5,
                                    what="every admitted KeyPolicy has a Ready condition")
        for name, ready in policies.items():
            no_traceback(json.dumps(ready))
            if name in bad_policies:
                assert ready["status"] == "False" and field_of(ready["message"]), ready
            else:
                assert ready["status"] == "True", ready
        bad_seen = sorted(set(admitted_policies) & set(bad_policies))
        assert bad_seen, "every bad KeyPolicy was refused by the server: none reached qkms"
        hijack = ready_condition(final["team-dev/hijack"]["status"])
        assert field_of(hijack["message"]) == "spec.projection.secretName", hijack
        log = operator.log()
        print(f"generated resources on the API server: {generated} generated and "
              f"{len(handmade)} handmade ManagedKeys, {sum(server_refused.values())} refused "
              f"by the API server (422) {dict(sorted(server_refused.items()))}; "
              f"{len(final)} admitted, operator alive, outcomes "
              f"{dict(sorted(outcomes.items()))}; bad KeyPolicies refused by the operator "
              f"naming the field: {bad_seen}; {len(events)} Events, "
              f"tracebacks in its log: {log.count('Traceback')}")
        assert "Traceback" not in log and "failed with an exception" not in log, \
            operator.log_tail(200)
    finally:
        await operator.stop()
