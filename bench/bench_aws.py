"""AWS_KMS: qkms against boto3 called directly, on one local moto server, same run.

(a) native KMS signing through ``use_key`` against the same Sign call made with boto3
(target ratio >= 0.8), and the thread hop alone (the floor the design sets); (b) envelope
keys (software, wrapped under the KMS wrapping key) next to native ones, with the
unwrapped key cached (the default) and without a cache.  moto's latency is not AWS's:
read the ratios, not the absolute rates.
"""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path

from qkms.model.enums import ProviderType
from tests.support.moto import MotoServer

from .providers import MESSAGE, on_server, rates_next_to_native, service
from .timing import compare


async def main() -> None:
    await on_server(lambda folder: MotoServer(folder / "moto"), _bench)


async def _bench(tmp: Path, server: MotoServer) -> None:
    svc = service(ProviderType.AWS_KMS, tmp / "data", server.options())
    client = server.client()
    print("== AWS_KMS (moto server): use_key vs boto3 directly ==")
    for name, algorithm in (("ECDSA-P256", "ECDSA_SHA_256"), ("RSA-2048", "RSASSA_PSS_SHA_256")):
        key = await svc.create_key(usage="SIGNING", algorithm=name, owner="bench")
        kms_key = svc.get_record(key.key_id).current.provider_ref["kms_key"]
        direct = partial(client.sign, KeyId=kms_key, Message=MESSAGE, MessageType="RAW",
                         SigningAlgorithm=algorithm)
        await compare(f"native SIGN {name} (1 KiB)",
                      lambda k=key: svc.use_key(k.key_id, "SIGN", MESSAGE), direct, target=0.8)
        await compare("  of which: asyncio.to_thread(boto3) alone",
                      lambda d=direct: asyncio.to_thread(d), direct)

    print("== envelope (software, wrapped by KMS) next to native, ops/s ==")
    cold = service(ProviderType.AWS_KMS, tmp / "data", server.options(), cache=0)
    native = await svc.create_key(usage="SIGNING", algorithm="ECDSA-P256", owner="bench")
    ed = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="bench")  # moto: envelope
    mldsa = await svc.create_key(usage="SIGNING", algorithm="ML-DSA-65", owner="bench")
    rows = [("native ECDSA-P256 (KMS Sign)", svc, native),
            (f"{ed.provider_mode} Ed25519, key cached", svc, ed),
            (f"{ed.provider_mode} Ed25519, no cache", cold, ed),
            (f"{mldsa.provider_mode} ML-DSA-65, key cached", svc, mldsa),
            (f"{mldsa.provider_mode} ML-DSA-65, no cache", cold, mldsa)]
    await rates_next_to_native(rows)
