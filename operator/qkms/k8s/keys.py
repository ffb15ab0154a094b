"""The ManagedKey controller, each handler one runtime call.

- create/update/resume: reconcile now. A transient fault raises ``TemporaryError`` with a
  jittered backoff (reconcile/retries.py); a bad spec is reported in the status and an
  Event and is not retried (``PermanentError``).
- A daemon per key sleeps until the key next needs attention (rotation, end of grace,
  destruction) and reconciles then: no polling, so 1,000 idle keys cost 1,000 sleeping
  tasks.
- Deletion runs the finalizer (Retain audits, Delete schedules destruction).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from qkms.model.names import GROUP, VERSION
from qkms.reconcile.retries import Fault, retry_delay

from .runtime import runtime_of

MANAGED_KEYS = (GROUP, VERSION, "managedkeys")
log = logging.getLogger("key-management:operator")


@kopf.on.resume(*MANAGED_KEYS)
@kopf.on.create(*MANAGED_KEYS)
@kopf.on.update(*MANAGED_KEYS)
async def reconcile_key(body: kopf.Body, retry: int, memo: kopf.Memo, **_: Any) -> None:
    try:
        outcome = await runtime_of(memo).reconcile(body)
    except Exception as exc:  # the API (or the records kept on it) went away mid-way
        raise kopf.TemporaryError(f"{type(exc).__name__}: {str(exc)[:200]}",
                                  delay=retry_delay(retry, Fault.API)) from exc
    if outcome.retry:
        raise kopf.TemporaryError(outcome.status.conditions[-1].message,
                                  delay=retry_delay(retry, Fault.PROVIDER))
    if outcome.status.phase == "Failed":
        raise kopf.PermanentError(next(c.message for c in outcome.status.conditions
                                       if c.type == "Ready"))


@kopf.daemon(*MANAGED_KEYS, cancellation_timeout=5.0, initial_delay=1.0)
async def key_clock(body: kopf.Body, stopped: kopf.DaemonStopped, memo: kopf.Memo,
                    **_: Any) -> None:
    runtime = runtime_of(memo)
    ident = (body["metadata"]["namespace"], body["metadata"]["name"])
    waker = runtime.wakers.setdefault(ident, asyncio.Event())
    # The create/resume handler reconciles first and then wakes us: start by planning.
    delay = runtime.next_delay(ident)
    failures = 0
    while not stopped:
        waker.clear()
        stop_wait = asyncio.ensure_future(stopped.wait())
        wake_wait = asyncio.ensure_future(waker.wait())
        await asyncio.wait({stop_wait, wake_wait}, timeout=delay,
                           return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        wake_wait.cancel()
        if stopped:
            break
        if waker.is_set():  # a handler just reconciled: only re-plan the sleep
            delay = runtime.next_delay(ident)
            continue
        try:
            outcome = await runtime.reconcile(body)
            delay = (retry_delay(failures, Fault.PROVIDER) if outcome.retry
                     else outcome.requeue_after or 3600.0)
            failures = failures + 1 if outcome.retry else 0
        except Exception:  # the daemon must survive a transient API error
            log.exception("timer for %s failed", ident)
            delay = retry_delay(failures, Fault.API)
            failures += 1
    runtime.wakers.pop(ident, None)


@kopf.on.delete(*MANAGED_KEYS)
async def finalize_key(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await runtime_of(memo).delete(body)
