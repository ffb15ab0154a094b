"""The KeyPolicy controller: a policy change re-plans every key of its environment; a
policy that does not parse is reported on itself (Ready=False) and never retried."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kopf

from qkms.errors import InvalidInputError
from qkms.model.names import GROUP, VERSION
from qkms.model.policy import parse_key_policy

from .runtime import runtime_of

KEY_POLICIES = (GROUP, VERSION, "keypolicies")


@kopf.on.resume(*KEY_POLICIES)
@kopf.on.create(*KEY_POLICIES)
@kopf.on.update(*KEY_POLICIES)
async def replan_policy(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo,
                        **_: Any) -> None:
    generation = body["metadata"].get("generation")
    try:
        policy = parse_key_policy(body)
    except InvalidInputError as exc:  # reported on the policy, not retried; keys ignore it
        patch.status["conditions"] = [ready(False, "InvalidSpec", str(exc), generation)]
        patch.status["observedGeneration"] = generation
        raise kopf.PermanentError(str(exc)) from None
    runtime = runtime_of(memo)
    runtime.kube.forget_cache()
    keys = await runtime.keys_under_policy(policy.spec.environment)
    for key in keys:
        await runtime.reconcile(key, fresh=True)  # listed earlier: reconcile it as it is now
    patch.status["keys"] = len(keys)
    patch.status["conditions"] = [ready(True, "PolicyAccepted",
                                        f"governs {len(keys)} ManagedKey(s)", generation)]
    patch.status["observedGeneration"] = generation


def ready(ok: bool, reason: str, message: str, generation: int | None) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return {"type": "Ready", "status": "True" if ok else "False", "reason": reason,
            "message": message, "lastTransitionTime": now, "observedGeneration": generation}
