"""Pure decisions for reconciling a ManagedKey: no I/O, no clock, tested with fixtures."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from qkms import lifecycle
from qkms.crypto import ethereum
from qkms.errors import EnvironmentMismatchError, InvalidInputError
from qkms.model.algorithms import resolve_algorithm
from qkms.model.base import Condition, ConditionType, set_condition
from qkms.model.enums import Environment, RotationReason, VersionState
from qkms.model.keys import KeyRecord
from qkms.model.managed_key import KeyVersionStatus, ManagedKey, ManagedKeyStatus, ProjectionFormat
from qkms.model.names import (
    ENVIRONMENT_LABEL,
    ROTATE_ANNOTATION,
    ROTATE_ID_ANNOTATION,
)
from qkms.model.policy import KeyPolicy
from qkms.model.schedules import effective_grace_period

PQC_WARNING_WINDOW = timedelta(days=365)


@dataclass(frozen=True)
class DesiredKey:
    """What the resource and its policy ask for."""

    name: str
    environment: Environment
    usage: str
    algorithm: str
    owner: str
    rotation_schedule: str
    grace_period: str


@dataclass(frozen=True)
class Request:
    """A one-shot request (rotate or revoke) with the ID that makes it run once."""

    kind: str  # rotate | revoke | migrate
    request_id: str
    reason: str
    algorithm: str | None = None


def key_name(mk: ManagedKey) -> str:
    """The service's stable name for a ManagedKey: namespace/name."""
    return f"{mk.namespace or 'default'}/{mk.name}"


def resolve_environment(mk: ManagedKey, namespace_labels: Mapping[str, str] | None,
                        default: Environment | None = None) -> Environment:
    """The namespace label decides; spec.environment, if set, must agree with it."""
    label = (namespace_labels or {}).get(ENVIRONMENT_LABEL)
    spec = mk.spec.environment
    if label is None:
        if spec is not None:
            return spec
        if default is not None:
            return default
        raise InvalidInputError(
            "metadata.namespace",
            f"namespace {mk.namespace!r} has no {ENVIRONMENT_LABEL} label and "
            "spec.environment is not set")
    try:
        env = Environment(label)
    except ValueError:
        raise InvalidInputError(
            "metadata.namespace", f"label {ENVIRONMENT_LABEL}={label!r} is not dev, staging "
            "or prod") from None
    if spec is not None and spec is not env:
        raise EnvironmentMismatchError(key_name(mk), spec.value, env.value,
                                       field="spec.environment")
    return env


def select_policy(mk: ManagedKey, environment: Environment,
                  policies: Sequence[KeyPolicy]) -> KeyPolicy | None:
    """The referenced policy, or the one for the environment; another environment's is refused."""
    if mk.spec.policy_ref:
        policy = next((p for p in policies if p.name == mk.spec.policy_ref), None)
        if policy is None:
            raise InvalidInputError("spec.policyRef",
                                    f"KeyPolicy {mk.spec.policy_ref!r} does not exist")
        if policy.spec.environment is not environment:
            raise EnvironmentMismatchError(
                f"KeyPolicy/{policy.name}", policy.spec.environment.value, environment.value,
                field="spec.policyRef")
        return policy
    matching = sorted((p for p in policies if p.spec.environment is environment),
                      key=lambda p: p.name or "")
    return matching[0] if matching else None


def rotate_reason(mk: ManagedKey) -> str | None:
    """The reason the ``qkms.io/rotate`` annotation asks for, if any; a bad one is refused."""
    annotations = mk.metadata.get("annotations") or {}
    if ROTATE_ANNOTATION not in annotations:
        return None
    reason = str(annotations[ROTATE_ANNOTATION]).strip().upper() or "MANUAL"
    if reason not in RotationReason.__members__:
        raise InvalidInputError(f"metadata.annotations[{ROTATE_ANNOTATION}]",
                                f"{reason!r} is not a rotation reason")
    return reason


def desired_key(mk: ManagedKey, environment: Environment,
                policy: KeyPolicy | None) -> DesiredKey:
    rotate_reason(mk)  # refuse a bad request before any key is made for it
    usage = mk.spec.usage
    if mk.spec.algorithm is not None:
        algorithm = resolve_algorithm(mk.spec.algorithm).name
        if policy is not None and not policy.spec.allows(algorithm):
            raise InvalidInputError(
                "spec.algorithm",
                f"{algorithm} is not in KeyPolicy {policy.name}'s allowedAlgorithms")
        if policy is not None and not policy.spec.pqc_policy.enabled:
            info = resolve_algorithm(algorithm)
            if info.post_quantum or info.hybrid:
                raise InvalidInputError(
                    "spec.algorithm", f"{algorithm} is post-quantum and KeyPolicy "
                    f"{policy.name} disables PQC")
    elif policy is not None:
        algorithm = policy.spec.preferred_algorithm(usage)
    else:
        from qkms.model.policy import preferred_algorithm

        algorithm = preferred_algorithm(usage)
    schedule = mk.spec.rotation_schedule or (
        policy.spec.rotation_schedule.for_usage(usage) if policy
        else lifecycle.DEFAULT_ROTATION[usage.value])
    grace = effective_grace_period(
        schedule, mk.spec.grace_period,
        policy.spec.grace_period if policy else lifecycle.DEFAULT_GRACE_PERIOD)
    try:
        lifecycle.validate_schedule(schedule, grace)
    except InvalidInputError as exc:
        raise InvalidInputError("spec.gracePeriod", exc.reason) from None
    return DesiredKey(key_name(mk), environment, usage.value, algorithm, mk.spec.owner,
                      schedule, grace)


def pending_requests(mk: ManagedKey, record: KeyRecord) -> list[Request]:
    """One-shot requests the record has not yet honoured, in the order to run them."""
    done = set(record.handled_requests)
    uid = mk.metadata.get("uid", "")
    requests: list[Request] = []
    if mk.spec.revoked is not None and lifecycle.key_state(record) is VersionState.ACTIVE:
        requests.append(Request("revoke", f"revoke:{uid}", mk.spec.revoked.reason))
        return requests  # nothing else matters for a key being revoked
    if lifecycle.active_version(record) is None:
        return requests
    annotations = mk.metadata.get("annotations") or {}
    reason = rotate_reason(mk)
    if reason is not None:
        marker = annotations.get(ROTATE_ID_ANNOTATION) or \
            f"rv:{mk.metadata.get('resourceVersion', '')}"
        requests.append(Request("rotate", f"annotation:{marker}", reason))
    token = mk.spec.rotation_request
    if token is not None and f"token:{token.token}" not in done:
        requests.append(Request("rotate", f"token:{token.token}",
                                token.rotation_reason.value))
    if mk.spec.algorithm is not None:
        wanted = resolve_algorithm(mk.spec.algorithm).name
        if wanted != record.algorithm:
            requests.append(Request("migrate", f"migrate:{uid}:{wanted}:{len(record.versions)}",
                                    RotationReason.MIGRATION.value, wanted))
    return [r for r in requests if r.request_id not in done]


def pqc_deadline_near(record: KeyRecord, policy: KeyPolicy | None, now: datetime) -> bool:
    if policy is None or not resolve_algorithm(record.algorithm).quantum_vulnerable:
        return False
    deadline = policy.spec.pqc_policy.migration_deadline
    return deadline is not None and deadline - now < PQC_WARNING_WINDOW


def build_status(mk: ManagedKey, record: KeyRecord, now: datetime, *,
                 policy: KeyPolicy | None = None, audit_cid: str | None = None,
                 degraded: str | None = None) -> ManagedKeyStatus:
    """The status a ManagedKey should show for its key record."""
    generation = mk.generation
    active = lifecycle.active_version(record)
    shown = active or record.current
    conditions: list[Condition] = list(mk.status.conditions)
    state = lifecycle.key_state(record)
    ready = active is not None
    reason = "KeyReady" if ready else f"Key{state.value.title().replace('_', '')}"
    message = (f"{shown.key_id} (version {shown.version}, {shown.algorithm}) is active"
               if ready else f"the key is {state.value.lower().replace('_', ' ')}")
    conditions = set_condition(conditions, ConditionType.READY, ready, reason, message,
                               generation, now)
    grace = [v for v in record.versions if lifecycle.in_grace(v, now)]
    conditions = set_condition(
        conditions, ConditionType.ROTATING, bool(grace),
        "GracePeriod" if grace else "Idle",
        f"{len(grace)} older version(s) still verify and decrypt" if grace else
        "no version in grace", generation, now)
    conditions = set_condition(
        conditions, ConditionType.DEGRADED, degraded is not None,
        "ProviderUnavailable" if degraded else "Healthy", degraded or "provider reachable",
        generation, now)
    if pqc_deadline_near(record, policy, now):
        assert policy is not None and policy.spec.pqc_policy.migration_deadline is not None
        conditions = set_condition(
            conditions, ConditionType.PQC_MIGRATION, True, "DeadlineApproaching",
            f"{record.algorithm} is quantum-vulnerable and the PQC migration deadline is "
            f"{policy.spec.pqc_policy.migration_deadline:%Y-%m-%d}", generation, now)
    elif any(c.type == ConditionType.PQC_MIGRATION for c in conditions):
        conditions = set_condition(conditions, ConditionType.PQC_MIGRATION, False,
                                   "NotRequired", "no migration needed", generation, now)
    token = mk.spec.rotation_request
    return ManagedKeyStatus(
        key_id=shown.key_id, key_name=record.name, current_version=shown.version,
        algorithm=shown.algorithm, provider=shown.provider, environment=record.environment,
        versions=[KeyVersionStatus(key_id=v.key_id, version=v.version, algorithm=v.algorithm,
                                   state=v.state, grace_until=v.grace_until,
                                   created_at=v.created_at) for v in record.versions],
        next_rotation=lifecycle.next_rotation(record), last_rotation=record.last_rotated_at,
        conditions=conditions, observed_generation=generation,
        last_audit_cid=audit_cid or mk.status.last_audit_cid,
        last_request_token=(token.token if token and f"token:{token.token}"
                            in record.handled_requests else mk.status.last_request_token),
        phase="Ready" if ready and not grace else "Rotating" if ready else state.value.title(),
    )


def failed_status(mk: ManagedKey, reason: str, message: str, now: datetime) -> ManagedKeyStatus:
    """Status for a spec the operator refuses: Ready False, naming the field in the message."""
    status = mk.status.model_copy()
    status.conditions = set_condition(status.conditions, ConditionType.READY, False, reason,
                                      message, mk.generation, now)
    status.observed_generation = mk.generation
    status.phase = "Failed"
    return status


def projection_data(record: KeyRecord, formats: Sequence[ProjectionFormat],
                    jwks: dict[str, Any], pem: str | None) -> dict[str, str]:
    """Public material only. Symmetric keys get a reference, never key material; a
    secp256k1 key also its Ethereum address (``ethereum-address``)."""
    shown = lifecycle.active_version(record) or record.current
    next_rotation = lifecycle.next_rotation(record)
    data = {
        "key-id": shown.key_id,
        "key-name": record.name,
        "algorithm": shown.algorithm,
        "version": str(shown.version),
        "next-rotation": next_rotation.isoformat() if next_rotation else "",
    }
    if shown.public_key is None:
        return data
    if ProjectionFormat.PEM in formats and pem:
        data["public.pem"] = pem
    if ProjectionFormat.JWKS in formats and jwks.get("keys"):
        data["jwks.json"] = json.dumps(jwks, sort_keys=True, indent=2)
    if ProjectionFormat.RAW in formats:
        data["public.b64"] = base64.b64encode(shown.public_key).decode()
    address = ethereum.address_of(shown.algorithm, shown.public_key)
    if address:  # secp256k1: the EIP-55 address wallets and contracts know the key by
        data["ethereum-address"] = address
    return data


def requeue_after(record: KeyRecord, now: datetime, cap: float = 3600.0) -> float:
    """Seconds until the key next needs attention (rotation, grace end, destruction)."""
    moment = lifecycle.next_event(record)
    if moment is None:
        return cap
    return max(0.5, min(cap, (moment - now).total_seconds()))
