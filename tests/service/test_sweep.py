"""The intent sweep (service/sweep.py) against writes that finish while it waits."""

from __future__ import annotations

import asyncio

from qkms.model.algorithms import resolve_algorithm


async def test_an_intent_settled_while_the_sweep_waits_is_not_closed_twice(svc) -> None:
    """The sweep lists the open intents, then takes each key's lock; a create that held the
    lock settles its own intent meanwhile. The sweep must not close it again (in a cluster
    each close is a Secret DELETE: a second one is a wasted call answered 404)."""
    await svc.create_key(name="team/payments", usage="SIGNING", algorithm="Ed25519", owner="team")
    closes: list[str] = []
    close = svc.intents.close
    svc.intents.close = lambda key_id: (closes.append(key_id), close(key_id))[1]

    async with svc._lock("team/payments"):
        await svc._announce("ROTATE", "team/payments", "key_dev_inflight",
                            resolve_algorithm("Ed25519"), None)
        sweep = asyncio.create_task(svc.resolve_intents())
        await asyncio.sleep(0.05)  # the sweep has listed the intent and waits for the lock
        await svc._settle("key_dev_inflight")
    assert await sweep == {}
    assert closes == ["key_dev_inflight"]
