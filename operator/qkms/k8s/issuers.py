"""Kopf handlers for the cert-manager issuers: KeyIssuer, ClusterKeyIssuer, and the
CertificateRequests that name them (issuerRef.group ``qkms.io``).

Thin by design: the decisions are in ``qkms.issuer.x509`` (pure); this module reads
what they need from the API, signs through ``KeyManagementService.use_key(SIGN)`` (the
CA key never leaves its provider), audits, and writes statuses.

- Issuer create/update/resume: make or check the CA certificate, then status Ready
  (CAReady) with the fingerprint and expiry, or Ready=False naming why (retried while
  the key is still being made). No timer, so no finalizer: the CA is checked again each
  time a request is signed, and a self-signed CA certificate is renewed then when the key
  rotated, the spec changed, or less than a third of its validity is left (the issuer's
  status follows). A CA certificate from a Secret must have the ManagedKey's public key
  (else CAKeyMismatch).
- CertificateRequest events: only Approved ones are signed (Denied and unapproved ones
  are left alone); a bad CSR, a name outside the policy, a duration above the maximum or
  a CA key that cannot sign gets Ready=False reason Failed; success writes
  status.certificate and status.ca and Ready=True reason Issued. Every issuance and
  every refusal is an audit entry (serial, subject, SANs, requester).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from qkms.crypto import suite_for
from qkms.errors import InvalidInputError, KeyNotFoundError, QkmsError
from qkms.issuer import x509 as ix
from qkms.model.durations import parse_duration
from qkms.model.issuers import ClusterKeyIssuer, KeyIssuer, parse_issuer

from .storage import GROUP, VERSION

log = logging.getLogger("key-management:issuer")

KEY_ISSUERS = (GROUP, VERSION, "keyissuers")
CLUSTER_KEY_ISSUERS = (GROUP, VERSION, "clusterkeyissuers")
CM_GROUP, CM_VERSION = "cert-manager.io", "v1"
CERTIFICATE_REQUESTS = (CM_GROUP, CM_VERSION, "certificaterequests")
ISSUER_KINDS = {"KeyIssuer": "keyissuers", "ClusterKeyIssuer": "clusterkeyissuers"}
RETRY_SECONDS = float(os.environ.get("QKMS_ISSUER_RETRY_SECONDS", "5"))
ISSUER_ACTOR = {"type": "SERVICE", "id": "qkms-issuer"}


class NotReady(Exception):
    """The issuer cannot sign now: ``reason`` (CamelCase) and a message; ``retry`` says
    whether it may come right by itself (a key still being created, a provider fault)."""

    def __init__(self, reason: str, message: str, *, retry: bool = False) -> None:
        super().__init__(message)
        self.reason, self.retry = reason, retry


def _runtime() -> Any:
    from .handlers import runtime
    return runtime()


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _stamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _condition(type_: str, ok: bool, reason: str, message: str,
               generation: int | None = None) -> dict[str, Any]:
    condition: dict[str, Any] = {
        "type": type_, "status": "True" if ok else "False", "reason": reason,
        "message": message, "lastTransitionTime": _stamp(_now())}
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition


def _spki_der(pem: str) -> bytes:
    return base64.b64decode("".join(line for line in pem.strip().splitlines()
                                    if not line.startswith("-----")))


def _source_digest(issuer: KeyIssuer | ClusterKeyIssuer) -> str:
    source = {"ca": issuer.spec.ca.to_dict(), "scheme": issuer.spec.rsa_signature_scheme.value}
    return hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:32]


async def _call(func: Any, *args: Any) -> Any:
    return await asyncio.to_thread(func, *args, _request_timeout=10)


# -- the CA ---------------------------------------------------------------------------

class IssuerState:
    """What an issuer needs to sign: its key, service, algorithm and CA certificate."""

    def __init__(self, issuer: KeyIssuer | ClusterKeyIssuer, key_name: str, service: Any,
                 algorithm: str, key_id: str, spki: bytes, ca_pem: bytes, ca: ix.CA) -> None:
        self.issuer, self.key_name, self.service = issuer, key_name, service
        self.algorithm, self.key_id, self.spki = algorithm, key_id, spki
        self.ca_pem, self.ca = ca_pem, ca

    @property
    def signature_alg(self) -> bytes:
        return ix.signature_algorithm(self.algorithm,
                                      self.issuer.spec.rsa_signature_scheme.value)

    def status(self) -> dict[str, Any]:
        return {"caCertificate": self.ca_pem.decode(), "caFingerprint": self.ca.fingerprint,
                "caNotAfter": _stamp(self.ca.not_after), "caKeyId": self.key_id,
                "caSourceDigest": _source_digest(self.issuer)}

    async def sign(self, tbs: bytes, actor: Any) -> bytes:
        """The provider signs; the answer must come from the CA's key version and verify."""
        result = await self.service.use_key(self.key_name, "SIGN", tbs, actor=actor)
        if result.key_id != self.key_id:
            raise NotReady("KeyRotated", f"{self.key_name} rotated while signing; retrying",
                           retry=True)
        if not suite_for(self.algorithm).load_public(ix.spki_parts(self.spki)[1]).verify(
                tbs, result.signature):
            raise NotReady("SignatureInvalid", "the provider's signature does not verify")
        return bytes(result.signature)


async def issuer_state(body: Mapping[str, Any]) -> IssuerState:
    """The issuer's CA, made or checked now; ``NotReady`` says why it cannot sign."""
    try:
        issuer = parse_issuer(body)
    except InvalidInputError as exc:
        raise NotReady("InvalidSpec", str(exc)) from None
    runtime = _runtime()
    ref = issuer.spec.key_ref
    namespace = ref.namespace or issuer.namespace
    if namespace is None:  # a body without metadata.namespace: no cluster sends one
        raise NotReady("InvalidSpec", "the ManagedKey's namespace is unknown")
    key_name = f"{namespace}/{ref.name}"
    environment = await runtime.environment(namespace)
    if environment is None:
        raise NotReady("KeyNotReady", f"namespace {namespace} has no qkms.io/environment label",
                       retry=True)
    key_body = await runtime.kube.managed_key(namespace, ref.name)
    if key_body is None:
        raise NotReady("KeyNotFound", f"ManagedKey {key_name} does not exist", retry=True)
    if (key_body.get("spec") or {}).get("usage") != "SIGNING":
        raise NotReady("WrongUsage", f"ManagedKey {key_name} is not a SIGNING key")
    service = await runtime.service(environment)
    try:
        meta = await service.get_key(key_name)
    except KeyNotFoundError:
        raise NotReady("KeyNotReady", f"ManagedKey {key_name} has no key yet",
                       retry=True) from None
    try:
        signature_alg = ix.signature_algorithm(meta.algorithm,
                                               issuer.spec.rsa_signature_scheme.value)
    except ix.Refused as exc:
        raise NotReady("UnsupportedAlgorithm", str(exc)) from None
    if not meta.public_key_pem:
        raise NotReady("UnsupportedAlgorithm", f"{meta.algorithm} has no public key")
    spki = _spki_der(meta.public_key_pem)
    if issuer.spec.ca.secret is not None:
        ca_pem = await _secret_ca(issuer, namespace)
        ca = _checked(ca_pem)
        if ca.spki_der != spki:
            raise NotReady("CAKeyMismatch", f"the CA certificate in Secret "
                           f"{issuer.spec.ca.secret.name} does not certify {key_name}'s public "
                           f"key (version {meta.version})")
        return IssuerState(issuer, key_name, service, meta.algorithm, meta.key_id, spki,
                           ca_pem, ca)
    state = _reusable(issuer, key_name, service, meta, spki)
    if state is not None:
        return state
    self_signed = issuer.spec.ca.self_signed
    assert self_signed is not None
    now = _now()
    duration = parse_duration(self_signed.duration, "spec.ca.selfSigned.duration")
    names = self_signed.name_constraints
    tbs = ix.ca_tbs(subject=ix.ca_subject(self_signed.common_name, self_signed.organization),
                    spki_der=spki, signature_alg=signature_alg,
                    serial=ix.serial_number(os.urandom(16)), now=now,
                    duration=(now + duration) - now, path_length=self_signed.path_length,
                    permitted_dns=names.permitted_dns_domains if names else (),
                    excluded_dns=names.excluded_dns_domains if names else ())
    pending = IssuerState(issuer, key_name, service, meta.algorithm, meta.key_id, spki, b"",
                          ix.CA(b"", spki, b"", now))
    signature = await pending.sign(tbs, ISSUER_ACTOR)
    ca_pem = ix.to_pem(ix.certificate(tbs, signature_alg, signature)).encode()
    ca = ix.read_ca(ca_pem)
    await service.audit_key_event("ISSUE_CA_CERTIFICATE", key_name, ISSUER_ACTOR,
                                  key_id=meta.key_id, details={
                                      "issuer": _issuer_ref(issuer),
                                      "fingerprint": ca.fingerprint,
                                      "subject": ix.ca_subject(
                                          self_signed.common_name,
                                          self_signed.organization).rfc4514_string(),
                                      "not_after": _stamp(ca.not_after)})
    return IssuerState(issuer, key_name, service, meta.algorithm, meta.key_id, spki, ca_pem, ca)


def _checked(ca_pem: bytes) -> ix.CA:
    try:
        return ix.read_ca(ca_pem)
    except ix.Refused as exc:
        raise NotReady("InvalidCACertificate", str(exc)) from None


def _reusable(issuer: KeyIssuer | ClusterKeyIssuer, key_name: str, service: Any, meta: Any,
              spki: bytes) -> IssuerState | None:
    """The self-signed CA certificate in the status, if it is still the one to use."""
    status = issuer.status
    if not status.ca_certificate or status.ca_key_id != meta.key_id or \
            status.ca_source_digest != _source_digest(issuer):
        return None
    try:
        ca = ix.read_ca(status.ca_certificate.encode())
    except ix.Refused:
        return None
    cert = ix.x509.load_pem_x509_certificate(status.ca_certificate.encode())
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    if ca.spki_der != spki or ca.not_after - _now() < lifetime / 3:
        return None
    return IssuerState(issuer, key_name, service, meta.algorithm, meta.key_id, spki,
                       status.ca_certificate.encode(), ca)


async def _secret_ca(issuer: KeyIssuer | ClusterKeyIssuer, key_namespace: str) -> bytes:
    secret = issuer.spec.ca.secret
    assert secret is not None
    namespace = secret.namespace or key_namespace
    try:
        data = await _runtime().kube.secret_bytes(namespace, secret.name)
    except LookupError:
        raise NotReady("CASecretNotFound", f"Secret {namespace}/{secret.name} does not exist",
                       retry=True) from None
    if secret.key not in data:
        raise NotReady("InvalidCACertificate",
                       f"Secret {namespace}/{secret.name} has no key {secret.key!r}")
    return data[secret.key]


def _issuer_ref(issuer: KeyIssuer | ClusterKeyIssuer) -> str:
    return issuer.kind + "/" + "/".join(p for p in (issuer.namespace, issuer.name) if p)


def _issuer_status(state: IssuerState | None, error: NotReady | None,
                   generation: int | None) -> dict[str, Any]:
    if state is not None:
        ready = _condition("Ready", True, "CAReady",
                           f"signs with {state.key_name} ({state.algorithm}); CA certificate "
                           f"valid until {_stamp(state.ca.not_after)}", generation)
        return {**state.status(), "conditions": [ready], "observedGeneration": generation}
    assert error is not None
    return {"conditions": [_condition("Ready", False, error.reason, str(error), generation)],
            "observedGeneration": generation}


async def refresh_issuer(body: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """The issuer's new status (its CA made or checked), and whether to try again."""
    generation = body["metadata"].get("generation")
    try:
        state = await issuer_state(body)
    except NotReady as exc:
        return _issuer_status(None, exc, generation), exc.retry
    except QkmsError as exc:  # a provider fault: reported and retried
        return _issuer_status(None, NotReady("ProviderUnavailable", str(exc)), generation), True
    return _issuer_status(state, None, generation), False


@kopf.on.resume(*KEY_ISSUERS)
@kopf.on.create(*KEY_ISSUERS)
@kopf.on.update(*KEY_ISSUERS)
@kopf.on.resume(*CLUSTER_KEY_ISSUERS)
@kopf.on.create(*CLUSTER_KEY_ISSUERS)
@kopf.on.update(*CLUSTER_KEY_ISSUERS)
async def reconcile_issuer(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    status, retry = await refresh_issuer(body)
    patch.status.update(status)
    if retry:  # a key still being made, a provider fault: Kopf tries again (status kept)
        raise kopf.TemporaryError(status["conditions"][0]["message"], delay=RETRY_SECONDS)
    _resume_if_ready(body, status)


def _resume_if_ready(body: Mapping[str, Any], status: dict[str, Any]) -> None:
    if status["conditions"][0]["status"] == "True":
        task = asyncio.create_task(resume_requests(dict(body)))
        RESUMING.add(task)
        task.add_done_callback(RESUMING.discard)


RESUMING: set[asyncio.Task[None]] = set()


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


async def _issuer_body(namespace: str, ref: Mapping[str, Any]) -> dict[str, Any] | None:
    custom = _runtime().kube.custom
    try:
        if ref["kind"] == "ClusterKeyIssuer":
            return dict(await _call(custom.get_cluster_custom_object, GROUP, VERSION,
                                    "clusterkeyissuers", ref["name"]))
        return dict(await _call(custom.get_namespaced_custom_object, GROUP, VERSION,
                                namespace, "keyissuers", ref["name"]))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


async def _patch_request(body: Mapping[str, Any], status: dict[str, Any]) -> None:
    meta = body["metadata"]
    kept = [c for t, c in _conditions(body).items() if t != "Ready"]
    status = {**status, "conditions": [*kept, *status.get("conditions", [])]}
    await _call(_runtime().kube.custom.patch_namespaced_custom_object_status, CM_GROUP,
                CM_VERSION, meta["namespace"], "certificaterequests", meta["name"],
                {"status": status})


async def _patch_issuer(issuer_body: Mapping[str, Any], status: dict[str, Any]) -> None:
    meta = issuer_body["metadata"]
    custom = _runtime().kube.custom
    if issuer_body["kind"] == "ClusterKeyIssuer":
        await _call(custom.patch_cluster_custom_object_status, GROUP, VERSION,
                    "clusterkeyissuers", meta["name"], {"status": status})
    else:
        await _call(custom.patch_namespaced_custom_object_status, GROUP, VERSION,
                    meta["namespace"], "keyissuers", meta["name"], {"status": status})


def _rules(issuer: KeyIssuer | ClusterKeyIssuer) -> ix.Rules:
    policy = issuer.spec.policy
    now = datetime(2000, 1, 1, tzinfo=UTC)

    def span(text: str, field: str) -> timedelta:
        return (now + parse_duration(text, field)) - now

    def some(values: list[str] | None) -> tuple[str, ...] | None:
        return None if values is None else tuple(values)
    return ix.Rules(span(policy.duration, "spec.policy.duration"),
                    span(policy.max_duration, "spec.policy.maxDuration"),
                    tuple(policy.usages), some(policy.allowed_dns_names),
                    some(policy.allowed_uris), some(policy.allowed_ip_ranges),
                    some(policy.allowed_email_addresses))


DONE: set[str] = set()  # uids signed or refused by this process (a stale event is ignored)
LOCKS: dict[str, asyncio.Lock] = {}


@kopf.on.event(*CERTIFICATE_REQUESTS, when=ours)
async def certificate_request(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    if event.get("type") != "DELETED":
        await _once(body)


async def _once(body: Mapping[str, Any]) -> None:
    """Sign a pending request at most once per process, whoever asks (event or resume)."""
    uid = body["metadata"]["uid"]
    async with LOCKS.setdefault(uid, asyncio.Lock()):
        if pending(body) and uid not in DONE:
            await sign_request(body)


async def resume_requests(issuer_body: Mapping[str, Any]) -> None:
    """Sign the approved requests left Pending while the issuer was not ready."""
    meta = issuer_body["metadata"]
    try:
        listing = await _call(_runtime().kube.custom.list_cluster_custom_object, CM_GROUP,
                              CM_VERSION, "certificaterequests")
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
            await _once(item)


async def sign_request(body: Mapping[str, Any]) -> None:
    """Sign one approved CertificateRequest, or refuse it, and write its status."""
    meta, spec = body["metadata"], body["spec"]
    ref = spec["issuerRef"]
    requester = spec.get("username") or "unknown"
    actor = {"type": "USER", "id": requester}
    issuer_body = await _issuer_body(meta["namespace"], ref)
    if issuer_body is None:
        await _patch_request(body, {"conditions": [_condition(
            "Ready", False, "Pending", f"{ref['kind']} {ref['name']} does not exist")]})
        return
    try:
        state = await issuer_state(issuer_body)
    except (NotReady, QkmsError) as exc:
        reason = exc.reason if isinstance(exc, NotReady) else "ProviderUnavailable"
        await _patch_request(body, {"conditions": [_condition(
            "Ready", False, "Pending", f"issuer {ref['name']} is not ready: {reason}: {exc}")]})
        return
    if state.status()["caFingerprint"] != (issuer_body.get("status") or {}).get("caFingerprint"):
        await _patch_issuer(issuer_body, _issuer_status(
            state, None, issuer_body["metadata"].get("generation")))
    where = f"{meta['namespace']}/{meta['name']}"
    try:
        try:
            csr = ix.parse_csr(base64.b64decode(spec.get("request") or "", validate=True))
        except ValueError as exc:
            raise ix.Refused(str(exc) if isinstance(exc, ix.Refused)
                             else "spec.request is not base64") from None
        duration = ix.go_duration(spec["duration"]) if spec.get("duration") else None
        decision = ix.check_request(csr, _rules(state.issuer), duration=duration,
                                    usages=spec.get("usages") or [],
                                    is_ca=bool(spec.get("isCA")))
    except ix.Refused as exc:
        DONE.add(meta["uid"])
        await state.service.audit_key_event(
            "ISSUE_CERTIFICATE", state.key_name, actor, result="denied", reason=str(exc),
            key_id=state.key_id,
            details={"certificate_request": where, "issuer": _issuer_ref(state.issuer)})
        await _patch_request(body, {"failureTime": _stamp(_now()), "conditions": [
            _condition("Ready", False, "Failed", f"refused: {exc}")]})
        return
    serial = ix.serial_number(os.urandom(16))
    tbs = ix.leaf_tbs(csr=csr, ca=state.ca, decision=decision,
                      signature_alg=state.signature_alg, serial=serial, now=_now())
    try:
        signature = await state.sign(tbs, actor)
    except (NotReady, QkmsError) as exc:
        await _patch_request(body, {"conditions": [_condition(
            "Ready", False, "Pending", f"signing failed, will retry: {exc}")]})
        return
    leaf = ix.to_pem(ix.certificate(tbs, state.signature_alg, signature)).encode()
    DONE.add(meta["uid"])
    subject = csr.subject.rfc4514_string()
    await state.service.audit_key_event(
        "ISSUE_CERTIFICATE", state.key_name, actor, key_id=state.key_id, details={
            "serial": format(serial, "x"), "subject": subject, "sans": ",".join(csr.sans()),
            "requester": requester, "certificate_request": where,
            "issuer": _issuer_ref(state.issuer), "key_algorithm": csr.key_algorithm,
            "not_after": _stamp(min(_now() + decision.duration, state.ca.not_after)),
            "ca_fingerprint": state.ca.fingerprint})
    await _patch_request(body, {
        "certificate": base64.b64encode(leaf).decode(),
        "ca": base64.b64encode(state.ca_pem).decode(),
        "conditions": [_condition("Ready", True, "Issued",
                                  f"signed by {state.key_name} ({state.algorithm}), "
                                  f"serial {format(serial, 'x')}")]})
    log.info("issued serial %x for %s (%s) by %s", serial, where, subject, state.key_name)
