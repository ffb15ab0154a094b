"""What the provider benchmarks (aws, vault, azure, hsm) share: the service over a
provider's local server, and the envelope keys measured next to a native one."""

from __future__ import annotations

import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from qkms.config import Settings
from qkms.model.enums import ProviderType
from qkms.service import KeyManagementService

from .ratios import interleaved, sequential
from .timing import arate

MESSAGE = b"\x5a" * 1024  # 1 KiB, the same for every side


def service(provider: ProviderType, data_dir: Path, options: dict[str, str],
            cache: float = 60.0) -> KeyManagementService:
    return KeyManagementService(Settings(provider=provider, data_dir=data_dir,
                                         provider_options=options, key_cache_seconds=cache))


async def on_server(make: Callable[[Path], Any],
                    bench: Callable[[Path, Any], Awaitable[None]]) -> None:
    """Start the server ``make(folder)`` in a temporary folder, run ``bench``, stop it."""
    with tempfile.TemporaryDirectory() as tmp:
        server = make(Path(tmp))
        server.start()
        try:
            await bench(Path(tmp), server)
        finally:
            server.stop()


async def rates_next_to_native(rows: list[tuple[str, KeyManagementService, Any]]) -> None:
    """SIGN rate of each (label, service, key), the first row (native) the reference."""
    reference = None
    for label, where, key in rows:
        best = max([await arate(lambda w=where, k=key: w.use_key(k.key_id, "SIGN", MESSAGE),
                                1.0) for _ in range(3)])
        reference = reference or best
        print(f"SIGN {label:<39} {best:>10.0f}/s  x{best / reference:.2f} of native")


async def envelope_interleaved(svc: KeyManagementService, native: Any,
                               algorithms: tuple[str, ...]) -> None:
    """Each envelope algorithm, its unwrapped key cached and not, against native P-256."""
    for algorithm, cache in [(a, 60.0) for a in algorithms] + [(algorithms[-1], 0.0)]:
        svc.provider.envelope.cache_seconds = cache  # type: ignore[attr-defined]
        key = await svc.create_key(usage="SIGNING", algorithm=algorithm, owner="bench")
        how = "cached" if cache else "unwrapped per use"
        await interleaved(
            f"SIGN {algorithm} envelope ({how})",
            sequential(lambda key=key: svc.use_key(key.key_id, "SIGN", MESSAGE)),
            sequential(lambda: svc.use_key(native.key_id, "SIGN", MESSAGE)),
            labels=("envelope", "native P-256"))
