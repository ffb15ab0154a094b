"""Refreshing an issuer: its CA made or checked (``issuer_ca``), its CA bundle and CRL
projected (``issuer_bundle``), its status written; under one lock per issuer, from a
fresh read of it.  ``refresh`` is what every trigger calls: the issuer's own events, a
change of its ManagedKey, a CertificateRequest to sign, a revocation, and the in-process
timer at half the CRL's validity (no finalizer: a restart's resume sets it again).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from qkms.errors import QkmsError
from qkms.model.issuers import parse_issuer
from qkms.model.names import GROUP, VERSION

from .issuer_bundle import crl_validity, publish
from .issuer_ca import IssuerState, NotReady, call, issuer_state, now, stamp
from .kube_api import Kube
from .runtime import OperatorRuntime

log = logging.getLogger("key-management:issuer")

ON_READY: list[Callable[[OperatorRuntime, Mapping[str, Any]], Awaitable[None]]] = []
"""Called (in the background) with the runtime and the issuer's body when a refresh finds
it ready."""

Ident = tuple[str, str | None, str]  # kind, namespace (None for a ClusterKeyIssuer), name


def _condition(type_: str, ok: bool, reason: str, message: str,
               generation: int | None = None) -> dict[str, Any]:
    condition: dict[str, Any] = {
        "type": type_, "status": "True" if ok else "False", "reason": reason,
        "message": message, "lastTransitionTime": stamp(now())}
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition


def _ident(body: Mapping[str, Any]) -> Ident:
    meta = body["metadata"]
    kind = body["kind"]
    return kind, None if kind == "ClusterKeyIssuer" else meta.get("namespace"), meta["name"]


def _issuer_status(state: IssuerState | None, error: NotReady | None,
                   generation: int | None) -> dict[str, Any]:
    if state is not None:
        ready = _condition("Ready", True, "CAReady",
                           f"signs with {state.key_name} ({state.algorithm}); CA certificate "
                           f"valid until {stamp(state.ca.not_after)}", generation)
        return {**state.status(), "conditions": [ready], "observedGeneration": generation}
    assert error is not None
    return {"conditions": [_condition("Ready", False, error.reason, str(error), generation)],
            "observedGeneration": generation}


async def refresh_issuer(runtime: OperatorRuntime, body: Mapping[str, Any]
                         ) -> tuple[dict[str, Any], bool, IssuerState | None]:
    """The issuer's new status (its CA made or checked, its bundle and CRL projected),
    whether to try again, and the state to sign with."""
    generation = body["metadata"].get("generation")
    try:
        state = await issuer_state(runtime, body)
    except NotReady as exc:
        status = _issuer_status(None, exc, generation)
        if exc.reason == "KeyRevoked":  # the bundle emptied, the last CRL kept
            status.update(await _published(runtime.kube, body, None))
        return status, exc.retry, None
    except QkmsError as exc:  # a provider fault: reported and retried
        return _issuer_status(None, NotReady("ProviderUnavailable", str(exc)),
                              generation), True, None
    status = _issuer_status(state, None, generation)
    status.update(await _published(runtime.kube, body, state))
    return status, False, state


async def _published(kube: Kube, body: Mapping[str, Any],
                     state: IssuerState | None) -> dict[str, Any]:
    try:
        issuer = state.issuer if state is not None else parse_issuer(body)
        return await publish(kube, body, issuer, state)
    except (ApiException, ValueError, QkmsError, NotReady) as exc:
        log.warning("%s: the CA bundle ConfigMap was not written: %s",
                    "/".join(p for p in _ident(body)[1:] if p), exc)
        return {}


# -- refreshing: under one lock per issuer, from a fresh read ------------------------------

def _spawn(runtime: OperatorRuntime, coroutine: Any) -> asyncio.Task[Any]:
    """A task kept referenced (on the runtime) until it ends; its coroutine carries the
    runtime it needs, captured when spawned."""
    task = asyncio.create_task(coroutine)
    runtime.issuers.tasks.add(task)
    task.add_done_callback(runtime.issuers.tasks.discard)
    return task


async def _read_issuer(kube: Kube, ident: Ident) -> dict[str, Any] | None:
    kind, namespace, name = ident
    return await _issuer_body(kube, namespace or "", {"kind": kind, "name": name})


async def refresh(runtime: OperatorRuntime, ident: Ident, *, resume: bool = True
                  ) -> tuple[dict[str, Any], IssuerState | None] | None:
    """Refresh the issuer now (None if it is gone): status written, timers set, and
    (``resume``) ``ON_READY`` called when it is ready.  ``kopf.TemporaryError``: retry."""
    async with runtime.issuers.locks.setdefault(ident, asyncio.Lock()):
        body = await _read_issuer(runtime.kube, ident)
        if body is None:
            _forget(runtime, ident)
            return None
        _watch_key(runtime, ident, body)
        status, retry, state = await refresh_issuer(runtime, body)
        await _patch_issuer(runtime.kube, body, status)
    if retry:  # a key still being made, a provider fault: tried again (status kept)
        raise kopf.TemporaryError(status["conditions"][0]["message"],
                                  delay=runtime.config.issuer_retry_seconds)
    _schedule(runtime, ident, body, status)
    if state is not None and resume:
        for hook in ON_READY:
            _spawn(runtime, hook(runtime, body))
    return status, state


def _watch_key(runtime: OperatorRuntime, ident: Ident, body: Mapping[str, Any]) -> None:
    ref = (body.get("spec") or {}).get("keyRef") or {}
    namespace = ref.get("namespace") or ident[1]
    of_key = runtime.issuers.issuers_of_key
    for issuers in of_key.values():
        issuers.discard(ident)
    if namespace and ref.get("name"):
        of_key.setdefault(f"{namespace}/{ref['name']}", set()).add(ident)


def _forget(runtime: OperatorRuntime, ident: Ident) -> None:
    for issuers in runtime.issuers.issuers_of_key.values():
        issuers.discard(ident)
    timer = runtime.issuers.timers.pop(ident, None)
    if timer is not None and timer is not asyncio.current_task():
        timer.cancel()


def _schedule(runtime: OperatorRuntime, ident: Ident, body: Mapping[str, Any],
              status: dict[str, Any]) -> None:
    """A refresh when half of the CRL's validity is left (a new CRL is then signed)."""
    next_update = status.get("crlNextUpdate")
    if not next_update:
        return
    try:
        issuer = parse_issuer(body)
        moment = now()
        due = datetime.fromisoformat(next_update.replace("Z", "+00:00")) - \
            crl_validity(issuer, moment) / 2
    except (ValueError, QkmsError):
        return
    delay = max(1.0, (due - moment).total_seconds() + 1.0)
    old = runtime.issuers.timers.pop(ident, None)
    if old is not None and old is not asyncio.current_task():
        old.cancel()
    runtime.issuers.timers[ident] = _spawn(runtime, _later(runtime, ident, delay))


async def _later(runtime: OperatorRuntime, ident: Ident, delay: float) -> None:
    await asyncio.sleep(delay)
    try:
        await refresh(runtime, ident)
    except (kopf.TemporaryError, ApiException, QkmsError) as exc:
        retry = runtime.config.issuer_retry_seconds
        log.warning("%s: refresh failed, again in %ss: %s", ident[2], retry, exc)
        runtime.issuers.timers[ident] = _spawn(runtime, _later(runtime, ident, retry))


async def _refresh_quietly(runtime: OperatorRuntime, ident: Ident) -> None:
    try:
        await refresh(runtime, ident)
    except (kopf.TemporaryError, ApiException, QkmsError) as exc:
        log.warning("%s: refresh after a key change failed: %s", ident[2], exc)
        _schedule_retry(runtime, ident)


def _schedule_retry(runtime: OperatorRuntime, ident: Ident) -> None:
    old = runtime.issuers.timers.pop(ident, None)
    if old is not None and old is not asyncio.current_task():
        old.cancel()
    runtime.issuers.timers[ident] = _spawn(
        runtime, _later(runtime, ident, runtime.config.issuer_retry_seconds))
async def _issuer_body(kube: Kube, namespace: str, ref: Mapping[str, Any]
                       ) -> dict[str, Any] | None:
    custom = kube.custom
    try:
        if ref["kind"] == "ClusterKeyIssuer":
            return dict(await call(custom.get_cluster_custom_object, GROUP, VERSION,
                                   "clusterkeyissuers", ref["name"]))
        return dict(await call(custom.get_namespaced_custom_object, GROUP, VERSION,
                               namespace, "keyissuers", ref["name"]))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


async def _patch_issuer(kube: Kube, issuer_body: Mapping[str, Any],
                        status: dict[str, Any]) -> None:
    meta = issuer_body["metadata"]
    custom = kube.custom
    if issuer_body["kind"] == "ClusterKeyIssuer":
        await call(custom.patch_cluster_custom_object_status, GROUP, VERSION,
                    "clusterkeyissuers", meta["name"], {"status": status})
    else:
        await call(custom.patch_namespaced_custom_object_status, GROUP, VERSION,
                    meta["namespace"], "keyissuers", meta["name"], {"status": status})
