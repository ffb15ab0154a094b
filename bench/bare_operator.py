"""The reference for bench_operator: a Kopf operator whose only handler patches status.

Whatever qkms costs above this is the price of making, storing and projecting keys.
"""

from __future__ import annotations

from typing import Any

import kopf


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.enabled = False


@kopf.on.create("qkms.io", "v1alpha1", "managedkeys")
def ready(patch: kopf.Patch, **_: Any) -> None:
    patch.status["conditions"] = [{"type": "Ready", "status": "True", "reason": "Bare",
                                   "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]
