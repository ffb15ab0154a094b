"""``qkms pqc status``: which keys still depend on quantum-vulnerable algorithms.

Pure: given ManagedKeys, their namespaces' labels and the KeyPolicies, it
reports each key's algorithm (the status's when the operator has set it,
else what the spec and policy would give) and how far the policy's PQC
migration deadline is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from qkms.errors import QkmsError
from qkms.model.algorithms import resolve_algorithm
from qkms.model.managed_key import ManagedKey
from qkms.model.policy import KeyPolicy

from . import decisions


@dataclass(frozen=True)
class PqcRow:
    key: str
    environment: str
    algorithm: str
    quantum_vulnerable: bool
    deadline: datetime | None
    days_left: int | None
    action: str


def pqc_status(keys: Sequence[ManagedKey], namespaces: Mapping[str, Mapping[str, str]],
               policies: Sequence[KeyPolicy], now: datetime) -> list[PqcRow]:
    rows = []
    for mk in keys:
        try:
            env = decisions.resolve_environment(mk, namespaces.get(mk.namespace or "default"))
            policy = decisions.select_policy(mk, env, policies)
            algorithm = mk.status.algorithm or decisions.desired_key(mk, env, policy).algorithm
        except QkmsError as exc:
            rows.append(PqcRow(decisions.key_name(mk), "?", "?", False, None, None,
                               f"cannot tell: {exc.message}"))
            continue
        vulnerable = resolve_algorithm(algorithm).quantum_vulnerable
        deadline = policy.spec.pqc_policy.migration_deadline if policy else None
        days = (deadline - now).days if deadline else None
        if not vulnerable:
            action = "none: post-quantum, hybrid or symmetric"
        elif days is not None and days < 365:
            action = "migrate now: set spec.algorithm to a hybrid or PQC algorithm"
        else:
            action = "plan migration (hybrid first, e.g. Ed25519+ML-DSA-65)"
        rows.append(PqcRow(decisions.key_name(mk), env.value, algorithm, vulnerable, deadline,
                           days, action))
    return rows
