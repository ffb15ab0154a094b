"""HASHICORP_VAULT: qkms against hvac called directly, on one local OpenBao, same run.

(a) native transit signing through ``use_key`` against the same transit call made with
hvac (target ratio >= 0.8: qkms adds a thread hop and an audit entry to a network call),
and the thread hop alone, the floor that "blocking SDK calls go to a thread" sets;
(b) envelope keys (software, wrapped by transit) next to native ones, with the unwrapped
key cached (the default) and without a cache (every operation unwraps through Vault).
"""

from __future__ import annotations

import asyncio
import base64
from functools import partial
from pathlib import Path

from qkms.model.enums import ProviderType
from tests.support.openbao import OpenBao

from .providers import MESSAGE, on_server, rates_next_to_native, service
from .timing import compare


async def main() -> None:
    await on_server(lambda folder: OpenBao(folder / "openbao"), _bench)


async def _bench(tmp: Path, server: OpenBao) -> None:
    svc = service(ProviderType.HASHICORP_VAULT, tmp / "data", server.options())
    client = server.client()
    print("== HASHICORP_VAULT (OpenBao dev server): use_key vs hvac directly ==")
    for name, params in (("Ed25519", {}),
                         ("ECDSA-P256", {"hash_algorithm": "sha2-256",
                                         "marshaling_algorithm": "asn1"})):
        key = await svc.create_key(usage="SIGNING", algorithm=name, owner="bench")
        await svc.use_key(key.key_id, "SIGN", MESSAGE)  # first use sets the encryption fence
        body = {"input": base64.b64encode(MESSAGE).decode(), "key_version": 1, **params}
        direct = partial(client.write_data, f"transit/sign/{key.key_id}", data=body)
        await compare(f"native SIGN {name} (1 KiB)",
                      lambda k=key: svc.use_key(k.key_id, "SIGN", MESSAGE), direct, target=0.8)
        # The floor the design sets: the same hvac call, only moved to a worker thread.
        await compare("  of which: asyncio.to_thread(hvac) alone",
                      lambda d=direct: asyncio.to_thread(d), direct)

    print("== envelope (software, wrapped by transit) next to native, ops/s ==")
    cold = service(ProviderType.HASHICORP_VAULT, tmp / "data", server.options(), cache=0)
    native = await svc.create_key(usage="SIGNING", algorithm="ECDSA-P256", owner="bench")
    envelope = await svc.create_key(usage="SIGNING", algorithm="ECDSA-secp256k1", owner="bench")
    falcon = await svc.create_key(usage="SIGNING", algorithm="Falcon-512", owner="bench")
    rows = [("native ECDSA-P256 (transit sign)", svc, native),
            ("envelope ECDSA-secp256k1, key cached", svc, envelope),
            ("envelope ECDSA-secp256k1, no cache", cold, envelope),
            ("envelope Falcon-512, key cached", svc, falcon),
            ("envelope Falcon-512, no cache", cold, falcon)]
    await rates_next_to_native(rows)
