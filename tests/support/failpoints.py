"""Fault injection for the crash tests, loaded beside the operator (``kopf run -m``).

``QKMS_TEST_KILL_AFTER_NEW_VERSIONS=N``: the operator SIGKILLs itself right after its Nth
new key version is made in the provider and before the catalog names it, the one window
where a kill leaves something half-made. A kill timed from outside lands there by chance
only (rarely, at a few ms per rotation), so the crash test places one there for certain.

``QKMS_TEST_SLOW_CREATE_SECONDS=S``: every new key takes S seconds longer to make, so that
a test can change the ManagedKey while the operator is still creating it.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from qkms.providers.base import CreatedKey
from qkms.providers.local import LocalDevProvider
from qkms.providers.vault import VaultProvider

LIMIT = int(os.environ.get("QKMS_TEST_KILL_AFTER_NEW_VERSIONS", "0"))
SLOW_CREATE = float(os.environ.get("QKMS_TEST_SLOW_CREATE_SECONDS", "0"))
made = 0

NewVersion = Callable[..., Awaitable[CreatedKey]]


def killing_after(original: NewVersion) -> NewVersion:
    async def new_version(self: Any, *args: Any, **kwargs: Any) -> CreatedKey:
        global made
        created = await original(self, *args, **kwargs)
        made += 1
        if made == LIMIT:
            os.kill(os.getpid(), signal.SIGKILL)
        return created
    return new_version


if LIMIT:
    for provider in (LocalDevProvider, VaultProvider):
        provider.new_version = killing_after(provider.new_version)  # type: ignore[method-assign]


def slowed(original: NewVersion) -> NewVersion:
    async def create(self: Any, *args: Any, **kwargs: Any) -> CreatedKey:
        await asyncio.sleep(SLOW_CREATE)
        return await original(self, *args, **kwargs)
    return create


if SLOW_CREATE:
    LocalDevProvider.create = slowed(LocalDevProvider.create)  # type: ignore[method-assign]
