"""Child process for the kill -9 test: appends as fast as it can from 16 tasks and
prints ``seq cid`` for every acknowledged entry, flushed, until it is killed."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from qkms.audit.chain import AuditChain
from tests.audit.helpers import AuditKey, make_entry


async def main(folder: str, sync: str, key_file: str) -> None:
    signer = AuditKey(private=Path(key_file).read_bytes())
    chain = AuditChain(Path(folder), sync=sync, signer=signer, checkpoint_every=100,
                       segment_bytes=64 * 1024)
    await chain.open()
    print("ready", flush=True)

    async def worker(n: int) -> None:
        for i in range(10**9):
            entry = await chain.append(make_entry(i, details={"worker": str(n)}))
            sys.stdout.write(f"{entry.sequence} {entry.cid}\n")
            sys.stdout.flush()

    await asyncio.gather(*(worker(n) for n in range(16)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
