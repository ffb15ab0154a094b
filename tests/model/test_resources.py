"""The KeyPolicy and ManagedKey models: parsing, errors that name fields, pure helpers.

Input resources live in ``tests/fixtures/resources/*.yaml``, each with the
body under ``input:`` and the outcome under ``expect:`` (``spec:`` a subset of
the normalised spec, or ``error:`` with the field and part of the reason).
``test_crds.py`` runs the same files through the generated CRD.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from qkms import errors, lifecycle
from qkms.model.base import Condition, ConditionStatus, field_path, get_condition, set_condition
from qkms.model.enums import Environment, RotationReason, Usage
from qkms.model.managed_key import ManagedKeySpec, parse_managed_key
from qkms.model.policy import (
    KeyPolicySpec,
    PQCPolicy,
    PreferredAlgorithms,
    RotationSchedule,
    credential_like,
    parse_key_policy,
    preferred_algorithm,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "resources"
PARSERS = {"ManagedKey": parse_managed_key, "KeyPolicy": parse_key_policy}


def load_fixtures() -> list[Any]:
    cases = []
    for path in sorted(FIXTURES.glob("*.yaml")):
        case = yaml.safe_load(path.read_text())
        cases.append(pytest.param(case["input"], case["expect"], id=path.stem))
    return cases


def assert_subset(expected: Any, actual: Any, path: str = "spec") -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: expected an object, got {actual!r}"
        for key, value in expected.items():
            assert key in actual, f"{path}.{key} missing from {sorted(actual)}"
            assert_subset(value, actual[key], f"{path}.{key}")
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


@pytest.mark.parametrize(("body", "expect"), load_fixtures())
def test_fixture(body: dict[str, Any], expect: dict[str, Any]) -> None:
    parse = PARSERS[body["kind"]]
    if "error" not in expect:
        resource = parse(body)
        assert_subset(expect.get("spec", {}), resource.spec.to_dict())
        # The normalised form parses to the same model: what the operator writes back is valid.
        assert parse({**body, "spec": resource.spec.to_dict()}).spec == resource.spec
        return
    want = expect["error"]
    with pytest.raises(errors.InvalidInputError) as caught:
        parse(body)
    error = caught.value
    assert error.field == want["field"]
    assert want.get("reason", "") in error.reason
    assert type(error).__name__ == want.get("type", type(error).__name__)
    assert str(error).startswith(f"{want['field']}: ")


# -- parsing --------------------------------------------------------------------------

def test_parse_accepts_kopf_style_mappings() -> None:
    """Kopf hands bodies as read-only Mapping views, not dicts."""
    from types import MappingProxyType

    spec = MappingProxyType({"usage": "SIGNING", "owner": "team-a"})
    key = parse_managed_key(MappingProxyType({"kind": "ManagedKey", "spec": spec,
                                              "metadata": {"name": "k", "generation": 2}}))
    assert (key.name, key.generation, key.spec.usage) == ("k", 2, Usage.SIGNING)


def test_wrong_kind_is_refused() -> None:
    with pytest.raises(errors.InvalidInputError) as caught:
        parse_managed_key({"kind": "KeyPolicy", "spec": {"usage": "SIGNING", "owner": "a"}})
    assert caught.value.field == "kind"


def test_missing_spec_names_spec() -> None:
    with pytest.raises(errors.InvalidInputError) as caught:
        parse_key_policy({"kind": "KeyPolicy", "metadata": {"name": "dev"}})
    assert caught.value.field == "spec"


def test_status_keeps_unknown_keys_out() -> None:
    """Kopf's own status.kopf does not break parsing, and is not carried in the model."""
    key = parse_managed_key({"spec": {"usage": "SIGNING", "owner": "a"},
                             "status": {"kopf": {"progress": {}}, "currentVersion": 4}})
    assert key.status.current_version == 4
    assert "kopf" not in key.status.to_dict()


def test_models_accept_python_names() -> None:
    spec = ManagedKeySpec(usage=Usage.ENCRYPTION, owner="a", algorithm="Kyber1024",
                          rotation_schedule="P30D", grace_period="P1D")
    assert spec.algorithm == "ML-KEM-1024"
    assert spec.to_dict() == {"usage": "ENCRYPTION", "algorithm": "ML-KEM-1024", "owner": "a",
                              "rotationSchedule": "P30D", "gracePeriod": "P1D",
                              "deletionPolicy": "Retain"}


@pytest.mark.parametrize(("grace", "schedule", "ok"), [
    ("P1D", "P30D", True), ("PT23H", "P1D", True), ("P1D", "P1D", False),
    ("P2M", "P30D", False), ("P1W", "P6D", False),
])
def test_grace_must_be_shorter_than_schedule(grace: str, schedule: str, ok: bool) -> None:
    spec = {"usage": "SIGNING", "owner": "a", "rotationSchedule": schedule, "gracePeriod": grace}
    if ok:
        parse_managed_key({"spec": spec})
    else:
        with pytest.raises(errors.InvalidInputError, match="spec.gracePeriod: "):
            parse_managed_key({"spec": spec})


def test_grace_alone_is_not_compared() -> None:
    """Without an override of the schedule, the operator compares with the policy's."""
    assert parse_managed_key({"spec": {"usage": "TRANSPORT", "owner": "a",
                                       "gracePeriod": "P60D"}}).spec.grace_period == "P60D"


def test_rotation_request_reason() -> None:
    key = parse_managed_key({"spec": {"usage": "SIGNING", "owner": "a",
                                      "rotationRequest": {"token": "t1"}}})
    assert key.spec.rotation_request is not None
    assert key.spec.rotation_request.rotation_reason is RotationReason.MANUAL
    with pytest.raises(errors.InvalidInputError, match="rotationRequest.reason"):
        parse_managed_key({"spec": {"usage": "SIGNING", "owner": "a",
                                    "rotationRequest": {"token": "t1", "reason": "MIGRATION"}}})


def test_field_path() -> None:
    assert field_path(("spec", "projection", "formats", 1)) == "spec.projection.formats[1]"
    assert field_path(("kind",)) == "kind"
    assert field_path(()) == ""


# -- KeyPolicy -----------------------------------------------------------------------

def test_rotation_defaults_follow_lifecycle() -> None:
    schedule = RotationSchedule()
    assert {u.value: schedule.for_usage(u) for u in Usage} == lifecycle.DEFAULT_ROTATION
    assert set(RotationSchedule.model_fields) == {u.value.lower() for u in Usage}


@pytest.mark.parametrize("days", range(0, 45))
def test_deletion_window_bounds(days: int) -> None:
    body = {"spec": {"environment": "dev", "deletionWindow": f"P{days}D"}}
    if lifecycle.DELETION_WINDOW_MIN_DAYS <= days <= lifecycle.DELETION_WINDOW_MAX_DAYS:
        assert parse_key_policy(body).spec.deletion_window == f"P{days}D"
    else:
        with pytest.raises(errors.InvalidInputError, match="spec.deletionWindow"):
            parse_key_policy(body)


@pytest.mark.parametrize(("environment", "setting", "fails_closed"), [
    ("prod", None, True), ("staging", None, False), ("dev", None, False),
    ("prod", False, False), ("dev", True, True),
])
def test_audit_fail_closed(environment: str, setting: bool | None, fails_closed: bool) -> None:
    spec = KeyPolicySpec(environment=Environment(environment),
                         audit_policy={"fail_closed": setting})
    assert spec.audit_fails_closed is fails_closed


def test_allows() -> None:
    spec = KeyPolicySpec(environment=Environment.DEV, allowed_algorithms=["Dilithium3"])
    assert spec.allows("ML-DSA-65") and spec.allows("mldsa65")
    assert not spec.allows("Ed25519")
    assert KeyPolicySpec(environment=Environment.DEV).allows("Falcon-512")


# -- credentials never inline ---------------------------------------------------------

@pytest.mark.parametrize("key", ["token", "VAULT_TOKEN", "password", "hsmPin", "pin",
                                 "clientSecret", "secretAccessKey", "accessKeyId", "apiKey",
                                 "privateKey", "passphrase", "credentials"])
def test_credential_settings_are_refused(key: str) -> None:
    assert credential_like(key)
    with pytest.raises(errors.InvalidInputError, match="credentialsSecretRef"):
        parse_key_policy({"spec": {"environment": "prod",
                                   "provider": {"settings": {key: "x"}}}})


@pytest.mark.parametrize("key", ["address", "region", "mountPath", "slot", "library", "vaultUrl",
                                 "keyId", "tenantId", "clientId", "endpointUrl", "mapping",
                                 "namespace", "tokenizerMode"])
def test_plain_settings_are_accepted(key: str) -> None:
    """Whole words count, not substrings: "mapping" holds no pin, "tokenizer" no token."""
    assert not credential_like(key)
    parse_key_policy({"spec": {"environment": "prod", "provider": {"settings": {key: "x"}}}})


def _field_paths(model: type[Any], prefix: str = "spec") -> list[str]:
    """Every field reachable from ``model``, as a dotted camelCase path."""
    from pydantic import BaseModel

    paths = []
    for name, info in model.model_fields.items():
        path = f"{prefix}.{info.alias or name}"
        paths.append(path)
        stack = [info.annotation]
        while stack:
            annotation = stack.pop()
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                paths += _field_paths(annotation, path)
            stack.extend(getattr(annotation, "__args__", ()))
    return paths


# Credential-looking names that are not credentials: references to Secrets by name,
# and the rotation request's token, which is a request ID (any new value rotates once).
NOT_CREDENTIALS = {
    "spec.provider.credentialsSecretRef",
    "spec.projection.secretName",
    "spec.importFrom.secretName",
    "spec.rotationRequest.token",
}


@pytest.mark.parametrize("model", [KeyPolicySpec, ManagedKeySpec])
def test_no_field_takes_an_inline_credential(model: type[Any]) -> None:
    """No field holds a credential: the credential-like ones name a Secret instead."""
    paths = _field_paths(model)
    assert len(paths) > 10
    credential_fields = {p for p in paths if credential_like(p.rsplit(".", 1)[-1])}
    assert credential_fields <= NOT_CREDENTIALS
    ref = KeyPolicySpec.model_fields["provider"].annotation.model_fields[
        "credentials_secret_ref"].annotation
    assert set(ref.__args__[0].model_fields) == {"name", "namespace"}
    for word in ("token", "password", "secret", "pin"):
        with pytest.raises(errors.InvalidInputError, match="unknown field"):
            parse_key_policy({"spec": {"environment": "prod", word: "x"}})
        with pytest.raises(errors.InvalidInputError, match="unknown field"):
            parse_key_policy({"spec": {"environment": "prod", "provider": {word: "x"}}})
        with pytest.raises(errors.InvalidInputError, match="unknown field"):
            parse_key_policy({"spec": {"environment": "prod", "provider": {
                "credentialsSecretRef": {"name": "s", word: "x"}}}})


# -- preferred_algorithm ------------------------------------------------------------------

def pqc(**kw: Any) -> PQCPolicy:
    return PQCPolicy.model_validate(kw)


@pytest.mark.parametrize(("policy", "expected"), [
    (pqc(), {"SIGNING": "ML-DSA-65", "AUTHENTICATION": "ML-DSA-65",
             "ENCRYPTION": "ML-KEM-768", "TRANSPORT": "ML-KEM-768",
             "KEY_DERIVATION": "HKDF-SHA256"}),
    (pqc(enabled=False), {"SIGNING": "Ed25519", "AUTHENTICATION": "Ed25519",
                          "ENCRYPTION": "AES-256-GCM", "TRANSPORT": "AES-256-GCM",
                          "KEY_DERIVATION": "HKDF-SHA256"}),
    (pqc(hybridMode=True), {"SIGNING": "Ed25519+ML-DSA-65", "AUTHENTICATION": "Ed25519+ML-DSA-65",
                            "ENCRYPTION": "X-Wing", "TRANSPORT": "X-Wing",
                            "KEY_DERIVATION": "HKDF-SHA256"}),
    # hybridMode needs PQC: a hybrid is half post-quantum.
    (pqc(enabled=False, hybridMode=True), {"SIGNING": "Ed25519", "ENCRYPTION": "AES-256-GCM"}),
    (pqc(preferredAlgorithms={"signing": [], "encryption": []}),
     {"SIGNING": "ML-DSA-65", "ENCRYPTION": "AES-256-GCM"}),
    (pqc(preferredAlgorithms={"signing": ["Falcon512", "Ed25519"], "encryption": ["RSA-4096"]}),
     {"SIGNING": "Falcon-512", "AUTHENTICATION": "Falcon-512", "ENCRYPTION": "RSA-4096",
      "TRANSPORT": "RSA-4096"}),
    # With PQC off, the PQC entries of the list are skipped, not an error.
    (pqc(enabled=False, preferredAlgorithms={"signing": ["ML-DSA-87", "ECDSA-P256"]}),
     {"SIGNING": "ECDSA-P256"}),
    (pqc(preferredAlgorithms={"keyDerivation": ["HKDF"]}), {"KEY_DERIVATION": "HKDF-SHA256"}),
])
def test_preferred_algorithm(policy: PQCPolicy, expected: dict[str, str]) -> None:
    assert {u: preferred_algorithm(Usage(u), policy) for u in expected} == expected


@pytest.mark.parametrize(("allowed", "usage", "expected"), [
    (["Falcon-1024", "AES-256-GCM"], "SIGNING", "Falcon-1024"),
    (["Falcon-1024", "AES-256-GCM"], "ENCRYPTION", "AES-256-GCM"),
    (["Ed25519"], "SIGNING", "Ed25519"),  # the classical default, after the PQC ones
    (["ECDSA-P256", "RSA-2048"], "SIGNING", "ECDSA-P256"),  # last resort: the allowed list
    (["ES256K"], "AUTHENTICATION", "ECDSA-secp256k1"),
])
def test_preferred_algorithm_respects_allowed(allowed: list[str], usage: str,
                                              expected: str) -> None:
    spec = KeyPolicySpec(environment=Environment.PROD, allowed_algorithms=allowed)
    assert spec.preferred_algorithm(Usage(usage)) == expected


def test_preferred_algorithm_with_nothing_allowed() -> None:
    spec = KeyPolicySpec(environment=Environment.PROD, allowed_algorithms=["Ed25519"])
    with pytest.raises(errors.InvalidInputError, match="no allowed algorithm serves usage"):
        spec.preferred_algorithm(Usage.ENCRYPTION)
    classical_off = KeyPolicySpec(environment=Environment.PROD, allowed_algorithms=["ML-DSA-65"],
                                  pqc_policy={"enabled": False})
    with pytest.raises(errors.PQCDisabledError, match="without post-quantum"):
        classical_off.preferred_algorithm(Usage.SIGNING)


def test_preferred_lists_default_to_the_seed() -> None:
    seed = PreferredAlgorithms(signing=["Dilithium3", "Falcon-1024"],
                               encryption=["Kyber768", "AES-256-GCM"])
    assert seed == PreferredAlgorithms()


# -- conditions -----------------------------------------------------------------------------

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def test_set_condition_adds() -> None:
    conditions = set_condition([], "Ready", True, "KeyCreated", "created", 1, T0)
    assert conditions == [Condition(type="Ready", status=ConditionStatus.TRUE, reason="KeyCreated",
                                    message="created", last_transition_time=T0,
                                    observed_generation=1)]


def test_set_condition_same_status_keeps_transition_time() -> None:
    before = set_condition([], "Ready", "True", "KeyCreated", "created", 1, T0)
    after = set_condition(before, "Ready", ConditionStatus.TRUE, "KeyRotated", "rotated", 2, T1)
    assert after[0].last_transition_time == T0
    assert (after[0].reason, after[0].message, after[0].observed_generation) == (
        "KeyRotated", "rotated", 2)


def test_set_condition_changed_status_moves_transition_time() -> None:
    before = set_condition([], "Ready", True, "KeyCreated", "created", 1, T0)
    after = set_condition(before, "Ready", False, "ProviderUnavailable", "down", 1, T1)
    assert after[0].status is ConditionStatus.FALSE
    assert after[0].last_transition_time == T1


def test_set_condition_keeps_others_and_order_and_input() -> None:
    conditions = set_condition([], "Ready", True, "KeyCreated", "", 1, T0)
    conditions = set_condition(conditions, "Rotating", False, "Idle", "", 1, T0)
    snapshot = [c.model_copy() for c in conditions]
    updated = set_condition(conditions, "Ready", "Unknown", "Checking", "", 2, T1)
    assert [c.type for c in updated] == ["Ready", "Rotating"]
    assert updated[1] is conditions[1]
    assert conditions == snapshot  # pure: the input list is untouched
    assert get_condition(updated, "Ready").status is ConditionStatus.UNKNOWN
    assert get_condition(updated, "Degraded") is None


def test_condition_serialises_as_kubernetes_expects() -> None:
    [condition] = set_condition([], "PQCMigration", True, "QuantumVulnerable", "m", 3, T0)
    assert condition.to_dict() == {
        "type": "PQCMigration", "status": "True", "reason": "QuantumVulnerable", "message": "m",
        "lastTransitionTime": "2026-11-29T12:00:00Z", "observedGeneration": 3,
    }


def test_token_label_is_a_name_not_a_credential() -> None:
    from qkms.model.policy import credential_like

    assert not credential_like("tokenLabel")
    assert credential_like("token") and credential_like("hsmPin")


def test_settings_never_show_credentials() -> None:
    from qkms.config import Settings

    settings = Settings(provider_options={"HSM_PIN": "1234-secret"})
    assert "1234-secret" not in repr(settings)
