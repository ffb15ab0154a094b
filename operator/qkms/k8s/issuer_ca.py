"""An issuer's CA, made or checked against its ManagedKey: the state it signs with.

The decisions are pure (``qkms.issuer``); this module reads the key and the issuer's
status, and signs CA certificates through the service, so the CA key never leaves its
provider.

- A self-signed CA certificate is made for the key's active version, and made again when
  the key rotated, the spec changed, or less than a third of its validity is left.  On a
  rotation the old version (in grace) cross-signs a bridge to the new CA certificate
  (``KeyManagementService.sign_bridge``), and the old CA certificate stays in
  ``status.previousCAs`` while its version may still verify.  Certificates are signed
  with the new version only once its CA certificate exists.
- A CA certificate from a Secret must certify the key's active version (else
  CAKeyMismatch): after a rotation, issuance waits for the new one in the Secret.
- A revoked key (or one with no active version) stops issuance: NotReady KeyRevoked.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from qkms import lifecycle
from qkms.crypto import suite_for
from qkms.errors import InvalidInputError, KeyNotFoundError
from qkms.issuer import ca as ica
from qkms.issuer import x509 as ix
from qkms.model.durations import parse_duration
from qkms.model.enums import VersionState
from qkms.model.issuers import ClusterKeyIssuer, KeyIssuer, parse_issuer

from .kube_api import Kube
from .runtime import OperatorRuntime

ISSUER_ACTOR = {"type": "SERVICE", "id": "qkms-issuer"}
HISTORY = 8  # earlier CA certificates and bridges kept at most


class NotReady(Exception):
    """The issuer cannot sign now: ``reason`` (CamelCase) and a message; ``retry`` says
    whether it may come right by itself (a key still being created, a provider fault)."""

    def __init__(self, reason: str, message: str, *, retry: bool = False) -> None:
        super().__init__(message)
        self.reason, self.retry = reason, retry


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def stamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _spki_der(pem: str) -> bytes:
    return base64.b64decode("".join(line for line in pem.strip().splitlines()
                                    if not line.startswith("-----")))


def _source_digest(issuer: KeyIssuer | ClusterKeyIssuer) -> str:
    source = {"ca": issuer.spec.ca.to_dict(), "scheme": issuer.spec.rsa_signature_scheme.value}
    return hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:32]


def issuer_ref(issuer: KeyIssuer | ClusterKeyIssuer) -> str:
    return issuer.kind + "/" + "/".join(p for p in (issuer.namespace, issuer.name) if p)


async def call(func: Any, *args: Any) -> Any:
    return await asyncio.to_thread(func, *args, _request_timeout=10)


class IssuerState:
    """What an issuer needs to sign: its key, service, algorithm and CA certificate, and
    the CA history (earlier CA certificates, bridges) its status carries."""

    def __init__(self, issuer: KeyIssuer | ClusterKeyIssuer, key_name: str, service: Any,
                 algorithm: str, key_id: str, spki: bytes, ca_pem: bytes, ca: ix.CA) -> None:
        self.issuer, self.key_name, self.service = issuer, key_name, service
        self.algorithm, self.key_id, self.spki = algorithm, key_id, spki
        self.ca_pem, self.ca = ca_pem, ca
        self.previous = [p.to_dict() for p in issuer.status.previous_cas]
        self.bridges = [b.to_dict() for b in issuer.status.bridges]

    @property
    def pkcs1v15(self) -> bool:
        return self.algorithm.startswith("RSA-") and \
            self.issuer.spec.rsa_signature_scheme.value == "PKCS1v15"

    @property
    def signature_alg(self) -> bytes:
        return ix.signature_algorithm(self.algorithm,
                                      self.issuer.spec.rsa_signature_scheme.value)

    def status(self) -> dict[str, Any]:
        return {"caCertificate": self.ca_pem.decode(), "caFingerprint": self.ca.fingerprint,
                "caNotAfter": stamp(self.ca.not_after), "caKeyId": self.key_id,
                "caSourceDigest": _source_digest(self.issuer),
                "previousCAs": self.previous, "bridges": self.bridges}

    def verifies(self, tbs: bytes, signature: bytes, algorithm: str, spki: bytes) -> bool:
        public = suite_for(algorithm).load_public(ix.spki_parts(spki)[1])
        if self.pkcs1v15:
            return bool(public.verify_with(tbs, signature, pkcs1v15=True))  # type: ignore
        return public.verify(tbs, signature)

    async def sign(self, tbs: bytes, actor: Any) -> bytes:
        """The provider signs; the answer must come from the CA's key version and verify."""
        options = {"rsa_padding": "pkcs1v15"} if self.pkcs1v15 else {}
        result = await self.service.use_key(self.key_name, "SIGN", tbs, actor=actor, **options)
        if result.key_id != self.key_id:
            raise NotReady("KeyRotated", f"{self.key_name} rotated while signing; retrying",
                           retry=True)
        if not self.verifies(tbs, result.signature, self.algorithm, self.spki):
            raise NotReady("SignatureInvalid", "the provider's signature does not verify")
        return bytes(result.signature)

    def live_history(self, verifying: set[str], moment: datetime) -> None:
        """Keep earlier CA certificates and bridges only while their key version may still
        verify (active or in grace) and they have not expired."""
        current, seen = self.ca_pem.decode(), set()
        kept = []
        for entry in self.previous:
            pem = entry["certificate"]
            if entry["keyId"] in verifying and pem != current and pem not in seen and \
                    not ica.expired(pem, moment):
                seen.add(pem)
                kept.append(entry)
        self.previous = kept[:HISTORY]
        self.bridges = [b for b in self.bridges if b["fromKeyId"] in verifying and
                        not ica.expired(b["certificate"], moment)][:HISTORY]


async def issuer_state(runtime: OperatorRuntime, body: Mapping[str, Any]) -> IssuerState:
    """The issuer's CA, made or checked now; ``NotReady`` says why it cannot sign."""
    try:
        issuer = parse_issuer(body)
    except InvalidInputError as exc:
        raise NotReady("InvalidSpec", str(exc)) from None
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
        record = service.get_record(key_name)
    except KeyNotFoundError:
        raise NotReady("KeyNotReady", f"ManagedKey {key_name} has no key yet",
                       retry=True) from None
    if meta.state is not VersionState.ACTIVE or lifecycle.active_version(record) is None:
        raise NotReady("KeyRevoked", f"ManagedKey {key_name} is {meta.state.value.lower()}: "
                       "the issuer signs nothing more")
    try:
        signature_alg = ix.signature_algorithm(meta.algorithm,
                                               issuer.spec.rsa_signature_scheme.value)
    except ix.Refused as exc:
        raise NotReady("UnsupportedAlgorithm", str(exc)) from None
    if not meta.public_key_pem:
        raise NotReady("UnsupportedAlgorithm", f"{meta.algorithm} has no public key")
    spki = _spki_der(meta.public_key_pem)
    verifying = {v.key_id for v in lifecycle.verifying_versions(record, service.clock())}
    if issuer.spec.ca.secret is not None:
        ca_pem = await _secret_ca(runtime.kube, issuer, namespace)
        ca = _checked(ca_pem)
        if ca.spki_der != spki:
            raise NotReady("CAKeyMismatch", f"the CA certificate in Secret "
                           f"{issuer.spec.ca.secret.name} does not certify {key_name}'s public "
                           f"key (version {meta.version})")
        state = IssuerState(issuer, key_name, service, meta.algorithm, meta.key_id, spki,
                            ca_pem, ca)
        _remember_previous(state)
        state.live_history(verifying, now())
        return state
    reused = _reusable(issuer, key_name, service, meta, spki)
    made = reused or await _self_signed(issuer, key_name, service, meta, spki, signature_alg)
    made.live_history(verifying, now())
    return made


def _remember_previous(state: IssuerState) -> None:
    """The CA certificate the status held, if another: into the history."""
    status = state.issuer.status
    if status.ca_certificate and status.ca_key_id and \
            status.ca_certificate != state.ca_pem.decode():
        state.previous.insert(0, {"keyId": status.ca_key_id,
                                  "certificate": status.ca_certificate})


async def _self_signed(issuer: KeyIssuer | ClusterKeyIssuer, key_name: str, service: Any,
                       meta: Any, spki: bytes, signature_alg: bytes) -> IssuerState:
    """A new self-signed CA certificate for the active version, and, if the version the
    status names rotated out and is in grace, a bridge from its CA certificate."""
    self_signed = issuer.spec.ca.self_signed
    assert self_signed is not None
    moment = now()
    duration = parse_duration(self_signed.duration, "spec.ca.selfSigned.duration")
    names = self_signed.name_constraints
    subject = ix.ca_subject(self_signed.common_name, self_signed.organization)
    tbs = ix.ca_tbs(subject=subject, spki_der=spki, signature_alg=signature_alg,
                    serial=ix.serial_number(os.urandom(16)), now=moment,
                    duration=(moment + duration) - moment, path_length=self_signed.path_length,
                    permitted_dns=names.permitted_dns_domains if names else (),
                    excluded_dns=names.excluded_dns_domains if names else ())
    state = IssuerState(issuer, key_name, service, meta.algorithm, meta.key_id, spki, b"",
                        ix.CA(b"", spki, b"", moment))
    signature = await state.sign(tbs, ISSUER_ACTOR)
    state.ca_pem = ix.to_pem(ix.certificate(tbs, signature_alg, signature)).encode()
    state.ca = ix.read_ca(state.ca_pem)
    await service.audit_key_event("ISSUE_CA_CERTIFICATE", key_name, ISSUER_ACTOR,
                                  key_id=meta.key_id, details={
                                      "issuer": issuer_ref(issuer),
                                      "fingerprint": state.ca.fingerprint,
                                      "subject": subject.rfc4514_string(),
                                      "not_after": stamp(state.ca.not_after)})
    _remember_previous(state)
    old_key_id = issuer.status.ca_key_id
    if old_key_id and old_key_id != meta.key_id and issuer.status.ca_certificate:
        await _bridge(state, old_key_id, issuer.status.ca_certificate.encode())
    return state


async def _bridge(state: IssuerState, old_key_id: str, old_pem: bytes) -> None:
    """The old version cross-signs the new CA certificate, if it is still in grace (a
    COMPROMISE rotation revoked it: no bridge, and its CA leaves the bundle)."""
    record = state.service.get_record(state.key_name)
    old_version = lifecycle.find_version(record, old_key_id)
    if old_version is None or not lifecycle.in_grace(old_version, state.service.clock()):
        return
    try:
        old = ix.read_ca(old_pem)
        old_alg = ix.signature_algorithm(old_version.algorithm,
                                         state.issuer.spec.rsa_signature_scheme.value)
        tbs = ica.bridge_tbs(new=state.ca, old=old, signature_alg=old_alg,
                             serial=ix.serial_number(os.urandom(16)), now=now(),
                             path_length=ica.path_length(state.ca_pem))
    except ix.Refused:
        return  # the old CA certificate expired or is unusable: nothing to bridge from
    options = {"rsa_padding": "pkcs1v15"} if state.pkcs1v15 and \
        old_version.algorithm.startswith("RSA-") else {}
    result = await state.service.sign_bridge(old_key_id, tbs, actor=ISSUER_ACTOR, **options)
    if not state.verifies(tbs, result.signature, old_version.algorithm, old.spki_der):
        raise NotReady("SignatureInvalid", "the provider's bridge signature does not verify")
    pem = ix.to_pem(ix.certificate(tbs, old_alg, bytes(result.signature)))
    state.bridges.insert(0, {"fromKeyId": old_key_id, "keyId": state.key_id,
                             "certificate": pem})
    await state.service.audit_key_event(
        "ISSUE_CA_CERTIFICATE", state.key_name, ISSUER_ACTOR, key_id=old_key_id, details={
            "issuer": issuer_ref(state.issuer), "kind": "bridge", "certifies": state.key_id,
            "fingerprint": hashlib.sha256(ix.certificate(tbs, old_alg, bytes(
                result.signature))).hexdigest()})


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
    if ca.spki_der != spki or ca.not_after - now() < lifetime / 3:
        return None
    return IssuerState(issuer, key_name, service, meta.algorithm, meta.key_id, spki,
                       status.ca_certificate.encode(), ca)


async def _secret_ca(kube: Kube, issuer: KeyIssuer | ClusterKeyIssuer,
                     key_namespace: str) -> bytes:
    secret = issuer.spec.ca.secret
    assert secret is not None
    namespace = secret.namespace or key_namespace
    try:
        data = await kube.secret_bytes(namespace, secret.name)
    except LookupError:
        raise NotReady("CASecretNotFound", f"Secret {namespace}/{secret.name} does not exist",
                       retry=True) from None
    if secret.key not in data:
        raise NotReady("InvalidCACertificate",
                       f"Secret {namespace}/{secret.name} has no key {secret.key!r}")
    return data[secret.key]


async def key_service(runtime: OperatorRuntime, body: Mapping[str, Any]
                      ) -> tuple[str, Any] | None:
    """The CA key's name and its environment's service (to audit), if they can be found."""
    try:
        issuer = parse_issuer(body)
    except (InvalidInputError, KeyError, AttributeError):
        return None
    namespace = issuer.spec.key_ref.namespace or issuer.namespace
    environment = await runtime.environment(namespace) if namespace else None
    if environment is None:
        return None
    return f"{namespace}/{issuer.spec.key_ref.name}", await runtime.service(environment)
