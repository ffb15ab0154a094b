"""Kopf handlers for the cert-manager issuers: KeyIssuer, ClusterKeyIssuer, and the
CertificateRequests that name them (issuerRef.group ``qkms.io``).

Thin by design: the decisions are in ``qkms.issuer`` (pure); the CA is made or checked
in ``issuer_ca``, the CA bundle and CRL projected by ``issuer_bundle``; this module reads
what they need from the API, signs through ``KeyManagementService.use_key(SIGN)`` (the
CA key never leaves its provider), audits, and writes statuses.

- Issuer create/update/resume, a change of its ManagedKey (a rotation, a revocation: the
  key's events are watched), and a timer at half the CRL's validity: the CA is made or
  checked, the ConfigMap ``<issuer>-ca-bundle`` written, and the status set to Ready
  (CAReady) with the fingerprint and expiry, or Ready=False naming why (retried while
  the key is still being made).  No finalizer: the timers live in the process and a
  restart resumes them.  Each refresh reads the issuer afresh under a per-issuer lock.
- CertificateRequest events: only Approved ones are signed (Denied and unapproved ones
  are left alone); a bad CSR, a name outside the policy, a duration above the maximum,
  a CA key that cannot sign or a revoked CA key gets Ready=False reason Failed; success
  writes status.certificate and status.ca and Ready=True reason Issued.  Every issuance
  and every refusal is an audit entry (serial, subject, SANs, requester).
- The annotation ``qkms.io/revoke`` (value: an RFC 5280 reason name, or empty) on an
  issued CertificateRequest revokes its certificate: recorded in the issuer's
  status.revokedCertificates (which outlives the request), audited
  (REVOKE_CERTIFICATE), and listed in the next CRL, signed at once.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from qkms.errors import KeyStateError, QkmsError
from qkms.issuer import crl as icrl
from qkms.issuer import policy as ipolicy
from qkms.issuer import x509 as ix
from qkms.model.durations import parse_duration
from qkms.model.issuers import ClusterKeyIssuer, KeyIssuer, parse_issuer
from qkms.model.names import (
    CERT_MANAGER_GROUP,
    CERT_MANAGER_VERSION,
    GROUP,
    REVOKE_ANNOTATION,
    VERSION,
)

from .issuer_ca import NotReady, call, issuer_ref, key_service, now, stamp
from .issuer_refresh import (
    ON_READY,
    Ident,
    _condition,
    _forget,
    _ident,
    _issuer_body,
    _patch_issuer,
    _read_issuer,
    _refresh_quietly,
    _schedule_retry,
    _spawn,
    refresh,
)
from .keys import MANAGED_KEYS
from .kube_api import Kube
from .runtime import OperatorRuntime, runtime_of

log = logging.getLogger("key-management:issuer")

KEY_ISSUERS = (GROUP, VERSION, "keyissuers")
CLUSTER_KEY_ISSUERS = (GROUP, VERSION, "clusterkeyissuers")
CERTIFICATE_REQUESTS = (CERT_MANAGER_GROUP, CERT_MANAGER_VERSION, "certificaterequests")
ISSUER_KINDS = {"KeyIssuer": "keyissuers", "ClusterKeyIssuer": "clusterkeyissuers"}

@kopf.on.resume(*KEY_ISSUERS)
@kopf.on.create(*KEY_ISSUERS)
@kopf.on.update(*KEY_ISSUERS)
@kopf.on.resume(*CLUSTER_KEY_ISSUERS)
@kopf.on.create(*CLUSTER_KEY_ISSUERS)
@kopf.on.update(*CLUSTER_KEY_ISSUERS)
async def reconcile_issuer(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await refresh(runtime_of(memo), _ident(body))


@kopf.on.delete(*KEY_ISSUERS, optional=True)
@kopf.on.delete(*CLUSTER_KEY_ISSUERS, optional=True)
async def issuer_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """No finalizer (optional): the ConfigMap goes with its owner; timers stop here."""
    _forget(runtime_of(memo), _ident(body))


@kopf.on.event(*MANAGED_KEYS)
async def key_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A rotation or revocation of a CA key refreshes its issuers at once."""
    runtime = runtime_of(memo)
    meta = body["metadata"]
    key = f"{meta.get('namespace')}/{meta['name']}"
    issuers = runtime.issuers.issuers_of_key.get(key)
    if not issuers:
        return
    status = body.get("status") or {}
    mark = json.dumps([status.get("keyId"), status.get("phase"),
                       [(v.get("keyId"), v.get("state")) for v in status.get("versions") or []]])
    if runtime.issuers.key_seen.get(key) == mark:
        return
    runtime.issuers.key_seen[key] = mark
    for ident in list(issuers):
        _spawn(runtime, _refresh_quietly(runtime, ident))


# -- CertificateRequests --------------------------------------------------------------

def ours(spec: Mapping[str, Any], **_: Any) -> bool:
    ref = spec.get("issuerRef") or {}
    return ref.get("group") == GROUP and ref.get("kind") in ISSUER_KINDS


def _conditions(body: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {c.get("type"): c for c in (body.get("status") or {}).get("conditions") or []}


def pending(body: Mapping[str, Any]) -> bool:
    """Approved, not Denied, and not yet Ready or Failed."""
    conditions = _conditions(body)
    if (body.get("status") or {}).get("certificate"):
        return False
    if conditions.get("Denied", {}).get("status") == "True":
        return False
    if conditions.get("Approved", {}).get("status") != "True":
        return False
    ready = conditions.get("Ready", {})
    return not (ready.get("status") == "True" or ready.get("reason") in ("Failed", "Denied"))


async def _patch_request(kube: Kube, body: Mapping[str, Any], status: dict[str, Any]
                         ) -> None:
    meta = body["metadata"]
    kept = [c for t, c in _conditions(body).items() if t != "Ready"]
    status = {**status, "conditions": [*kept, *status.get("conditions", [])]}
    await call(kube.custom.patch_namespaced_custom_object_status, CERT_MANAGER_GROUP,
               CERT_MANAGER_VERSION, meta["namespace"], "certificaterequests", meta["name"],
                {"status": status})


def _rules(issuer: KeyIssuer | ClusterKeyIssuer) -> ipolicy.Rules:
    policy = issuer.spec.policy
    start = datetime(2000, 1, 1, tzinfo=UTC)

    def span(text: str, field: str) -> timedelta:
        return (start + parse_duration(text, field)) - start

    def some(values: list[str] | None) -> tuple[str, ...] | None:
        return None if values is None else tuple(values)
    return ipolicy.Rules(span(policy.duration, "spec.policy.duration"),
                    span(policy.max_duration, "spec.policy.maxDuration"),
                    tuple(policy.usages), some(policy.allowed_dns_names),
                    some(policy.allowed_uris), some(policy.allowed_ip_ranges),
                    some(policy.allowed_email_addresses))


@kopf.on.event(*CERTIFICATE_REQUESTS, when=ours)
async def certificate_request(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo,
                              **_: Any) -> None:
    if event.get("type") == "DELETED":
        return
    if REVOKE_ANNOTATION in (body["metadata"].get("annotations") or {}):
        await revoke_certificate(runtime_of(memo), body)
    else:
        await _once(runtime_of(memo), body)


async def _once(runtime: OperatorRuntime, body: Mapping[str, Any]) -> None:
    """Sign a pending request at most once per process, whoever asks (event or resume)."""
    uid = body["metadata"]["uid"]
    async with runtime.issuers.request_locks.setdefault(uid, asyncio.Lock()):
        if pending(body) and uid not in runtime.issuers.done:  # a stale event is ignored
            await sign_request(runtime, body)


async def resume_requests(runtime: OperatorRuntime, issuer_body: Mapping[str, Any]) -> None:
    """Sign the approved requests left Pending while the issuer was not ready."""
    meta = issuer_body["metadata"]
    try:
        listing = await call(runtime.kube.custom.list_cluster_custom_object,
                             CERT_MANAGER_GROUP, CERT_MANAGER_VERSION, "certificaterequests")
    except ApiException as exc:
        if exc.status == 404:  # cert-manager's CRDs are not installed
            return
        raise
    for item in listing.get("items") or []:
        ref = (item.get("spec") or {}).get("issuerRef") or {}
        same = ref.get("kind") == issuer_body["kind"] and ref.get("name") == meta["name"] and \
            (issuer_body["kind"] == "ClusterKeyIssuer" or
             item["metadata"]["namespace"] == meta.get("namespace"))
        if same and ours(item["spec"]):
            await _once(runtime, item)


async def sign_request(runtime: OperatorRuntime, body: Mapping[str, Any]) -> None:
    """Sign one approved CertificateRequest, or refuse it, and write its status."""
    meta, spec = body["metadata"], body["spec"]
    ref = spec["issuerRef"]
    requester = spec.get("username") or "unknown"
    actor = {"type": "USER", "id": requester}
    ident: Ident = (ref["kind"], None if ref["kind"] == "ClusterKeyIssuer"
                    else meta["namespace"], ref["name"])
    try:
        refreshed = await refresh(runtime, ident, resume=False)
    except (kopf.TemporaryError, ApiException, QkmsError) as exc:
        await _patch_request(runtime.kube, body, {"conditions": [_condition(
            "Ready", False, "Pending", f"issuer {ref['name']} is not ready: {exc}")]})
        return
    if refreshed is None:
        await _patch_request(runtime.kube, body, {"conditions": [_condition(
            "Ready", False, "Pending", f"{ref['kind']} {ref['name']} does not exist")]})
        return
    status, state = refreshed
    where = f"{meta['namespace']}/{meta['name']}"
    if state is None:
        ready = status["conditions"][0]
        if ready["reason"] == "KeyRevoked":  # final: the CA key signs nothing more
            await _refuse(runtime, body, where, f"issuer {ref['name']}: {ready['message']}")
        else:
            await _patch_request(runtime.kube, body, {"conditions": [_condition(
                "Ready", False, "Pending",
                f"issuer {ref['name']} is not ready: {ready['reason']}: {ready['message']}")]})
        return
    try:
        try:
            csr = ix.parse_csr(base64.b64decode(spec.get("request") or "", validate=True))
        except ValueError as exc:
            raise ix.Refused(str(exc) if isinstance(exc, ix.Refused)
                             else "spec.request is not base64") from None
        duration = ipolicy.go_duration(spec["duration"]) if spec.get("duration") else None
        decision = ipolicy.check_request(csr, _rules(state.issuer), duration=duration,
                                    usages=spec.get("usages") or [],
                                    is_ca=bool(spec.get("isCA")))
    except ix.Refused as exc:
        runtime.issuers.done.add(meta["uid"])
        await state.service.audit_key_event(
            "ISSUE_CERTIFICATE", state.key_name, actor, result="denied", reason=str(exc),
            key_id=state.key_id,
            details={"certificate_request": where, "issuer": issuer_ref(state.issuer)})
        await _patch_request(runtime.kube, body, {"failureTime": stamp(now()), "conditions": [
            _condition("Ready", False, "Failed", f"refused: {exc}")]})
        return
    serial = ix.serial_number(os.urandom(16))
    tbs = ix.leaf_tbs(csr=csr, ca=state.ca, decision=decision,
                      signature_alg=state.signature_alg, serial=serial, now=now())
    try:
        signature = await state.sign(tbs, actor)
    except KeyStateError as exc:  # revoked (or rotated out) just now
        await _refuse(runtime, body, where, f"issuer {ref['name']}: the CA key cannot sign: {exc}")
        return
    except (NotReady, QkmsError) as exc:
        await _patch_request(runtime.kube, body, {"conditions": [_condition(
            "Ready", False, "Pending", f"signing failed, will retry: {exc}")]})
        return
    leaf = ix.to_pem(ix.certificate(tbs, state.signature_alg, signature)).encode()
    runtime.issuers.done.add(meta["uid"])
    subject = csr.subject.rfc4514_string()
    await state.service.audit_key_event(
        "ISSUE_CERTIFICATE", state.key_name, actor, key_id=state.key_id, details={
            "serial": format(serial, "x"), "subject": subject, "sans": ",".join(csr.sans()),
            "requester": requester, "certificate_request": where,
            "issuer": issuer_ref(state.issuer), "key_algorithm": csr.key_algorithm,
            "not_after": stamp(min(now() + decision.duration, state.ca.not_after)),
            "ca_fingerprint": state.ca.fingerprint})
    await _patch_request(runtime.kube, body, {
        "certificate": base64.b64encode(leaf).decode(),
        "ca": base64.b64encode(state.ca_pem).decode(),
        "conditions": [_condition("Ready", True, "Issued",
                                  f"signed by {state.key_name} ({state.algorithm}), "
                                  f"serial {format(serial, 'x')}")]})
    log.info("issued serial %x for %s (%s) by %s", serial, where, subject, state.key_name)


async def _refuse(runtime: OperatorRuntime, body: Mapping[str, Any], where: str,
                  message: str, issuer_body: Mapping[str, Any] | None = None) -> None:
    """Ready=False reason Failed (final), audited as a refused ISSUE_CERTIFICATE."""
    meta, spec = body["metadata"], body["spec"]
    runtime.issuers.done.add(meta["uid"])
    found = await key_service(runtime, issuer_body or await _issuer_body(
        runtime.kube, meta["namespace"], spec["issuerRef"]) or {})
    if found is not None:
        key_name, service = found
        await service.audit_key_event(
            "ISSUE_CERTIFICATE", key_name, {"type": "USER", "id": spec.get("username") or
                                            "unknown"}, result="denied", reason=message,
            details={"certificate_request": where, "issuer": spec["issuerRef"]["name"]})
    await _patch_request(runtime.kube, body, {"failureTime": stamp(now()), "conditions": [
        _condition("Ready", False, "Failed", f"refused: {message}")]})


# -- revocation ----------------------------------------------------------------------------

async def revoke_certificate(runtime: OperatorRuntime, body: Mapping[str, Any]) -> None:
    """Record the request's certificate as revoked by its issuer, then sign a new CRL."""
    meta, spec = body["metadata"], body["spec"]
    where = f"{meta['namespace']}/{meta['name']}"
    encoded = (body.get("status") or {}).get("certificate")
    if not encoded or meta["uid"] in runtime.issuers.revoked:
        return
    runtime.issuers.revoked.add(meta["uid"])
    ref = spec["issuerRef"]
    ident: Ident = (ref["kind"], None if ref["kind"] == "ClusterKeyIssuer"
                    else meta["namespace"], ref["name"])
    try:
        leaf = ix.x509.load_pem_x509_certificates(base64.b64decode(encoded))[0]
        why = icrl.reason(meta["annotations"][REVOKE_ANNOTATION])
    except (ValueError, ix.Refused) as exc:
        log.warning("%s: not revoked: %s", where, exc)
        return
    serial = format(leaf.serial_number, "x")
    async with runtime.issuers.locks.setdefault(ident, asyncio.Lock()):
        issuer_body = await _read_issuer(runtime.kube, ident)
        if issuer_body is None:
            return
        issuer = parse_issuer(issuer_body)
        known = [r.to_dict() for r in issuer.status.revoked_certificates]
        cas = [issuer.status.ca_certificate or "",
               *(p.certificate for p in issuer.status.previous_cas)]
        if any(r["serial"] == serial for r in known) or not any(
                _issued_by(leaf, pem) for pem in cas if pem):
            return
        moment = now()
        entry = {"serial": serial, "revokedAt": stamp(moment), "reason": why,
                 "certificateRequest": where, "notAfter": stamp(leaf.not_valid_after_utc)}
        kept = [r for r in known if datetime.fromisoformat(
            r.get("notAfter", "9999-12-31T00:00:00+00:00").replace("Z", "+00:00")) > moment]
        await _patch_issuer(runtime.kube, issuer_body, {"revokedCertificates": [*kept, entry]})
        found = await key_service(runtime, issuer_body)
        if found is not None:
            key_name, service = found
            await service.audit_key_event(
                "REVOKE_CERTIFICATE", key_name, {"type": "USER", "id": "kubernetes"},
                reason=why, details={"serial": serial, "certificate_request": where,
                                     "issuer": issuer_ref(issuer),
                                     "subject": leaf.subject.rfc4514_string()})
    log.info("revoked serial %s (%s) of %s", serial, why, where)
    try:
        await refresh(runtime, ident, resume=False)  # the CRL that lists it, signed now
    except (kopf.TemporaryError, ApiException, QkmsError) as exc:
        log.warning("%s: CRL not re-signed yet: %s", ident[2], exc)
        _schedule_retry(runtime, ident)


def _issued_by(leaf: Any, ca_pem: str) -> bool:
    try:
        ca = ix.read_ca(ca_pem.encode())
        aki = leaf.extensions.get_extension_for_class(ix.x509.AuthorityKeyIdentifier).value
    except (ix.Refused, ValueError, ix.x509.ExtensionNotFound):
        return False
    return bool(aki.key_identifier == ca.key_identifier and
                leaf.issuer.public_bytes() == ca.subject_der)


ON_READY.append(resume_requests)
