"""The cert-manager issuers: KeyIssuer (namespaced) and ClusterKeyIssuer.

An issuer names a SIGNING ManagedKey as its CA key.  Its CA certificate is either made
by qkms (self-signed by that key) or taken from a Secret, whose public key must be the
ManagedKey's.  cert-manager CertificateRequests that point at the issuer (issuerRef
group ``qkms.io``) are signed by the key inside its provider once they are Approved.
Like the other resources, the CRDs are generated from these models.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, Field, StringConstraints, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .base import (
    Condition,
    DnsName,
    IsoDuration,
    NonEmpty,
    _conditions,
    _Resource,
    _section,
    _Spec,
    _Status,
    parse,
)

KEY_USAGES: tuple[str, ...] = (
    "signing", "digital signature", "content commitment", "key encipherment",
    "key agreement", "data encipherment", "encipher only", "decipher only",
)
"""cert-manager's key usage names that end-entity certificates may carry (no cert sign)."""
EXTENDED_KEY_USAGES: tuple[str, ...] = (
    "any", "server auth", "client auth", "code signing", "email protection", "s/mime",
    "ipsec end system", "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing",
)
"""cert-manager's extended key usage names."""
CA_USAGES: tuple[str, ...] = ("cert sign", "crl sign")
"""Usages of CA certificates: a qkms issuer issues end-entity certificates only."""

UsageName = Annotated[str, Field(json_schema_extra={
    "enum": [*KEY_USAGES, *EXTENDED_KEY_USAGES]})]
Pattern = Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=r"^\S+$")]
DataKey = Annotated[str, StringConstraints(max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")]


class RsaSignatureScheme(StrEnum):
    PSS = "PSS"
    PKCS1V15 = "PKCS1v15"


class KeyReference(_Spec):
    """The SIGNING ManagedKey that is the CA key."""

    name: DnsName
    namespace: DnsName | None = None
    """The ManagedKey's namespace: required on a ClusterKeyIssuer, and on a KeyIssuer
    it must be left out (the issuer's own namespace)."""


class NameConstraints(_Spec):
    """RFC 5280 name constraints written into a self-signed CA certificate (critical)."""

    permitted_dns_domains: list[Pattern] = Field(default_factory=list)
    excluded_dns_domains: list[Pattern] = Field(default_factory=list)


class SelfSigned(_Spec):
    """A CA certificate qkms makes, signed by the ManagedKey itself."""

    common_name: NonEmpty
    """The CA's subject commonName."""
    organization: list[NonEmpty] = Field(default_factory=list)
    """The CA's subject organization(s)."""
    duration: IsoDuration = "P3650D"
    """How long the CA certificate is valid (ISO 8601); it is renewed when the key rotates
    or when less than a third of it is left."""
    path_length: int | None = Field(None, ge=0)
    """basicConstraints pathLenConstraint; unset leaves it unconstrained."""
    name_constraints: NameConstraints | None = None


class CASecret(_Spec):
    """An existing CA certificate (PEM) in a Secret; its public key must be the ManagedKey's."""

    name: DnsName
    namespace: DnsName | None = None
    """The Secret's namespace: defaults to the ManagedKey's."""
    key: DataKey = "tls.crt"
    """The Secret's data key holding the PEM certificate."""


class CertificateAuthority(_Spec):
    """Where the CA certificate comes from: exactly one of selfSigned and secret."""

    self_signed: SelfSigned | None = None
    secret: CASecret | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> CertificateAuthority:
        if (self.self_signed is None) == (self.secret is None):
            raise PydanticCustomError("invalid_input",
                                      "ca needs exactly one of selfSigned and secret")
        return self


class IssuancePolicy(_Spec):
    """What certificates the issuer signs, and their defaults."""

    duration: IsoDuration = "P90D"
    """Validity of a certificate whose request names no duration (ISO 8601)."""
    max_duration: IsoDuration = "P397D"
    """A request for longer is refused (ISO 8601)."""
    usages: list[UsageName] = Field(default_factory=lambda: ["digital signature",
                                                             "key encipherment"])
    """Key usages of a request that names none (cert-manager's names)."""
    allowed_dns_names: list[Pattern] | None = None
    """DNS names (SANs, and a commonName) that may be certified: exact names, or '*'
    standing for one label ('*.payments.svc'). Unset allows any; empty allows none."""
    allowed_uris: list[Pattern] | None = None
    """URI SANs that may be certified; '*' matches any characters
    ('spiffe://cluster.local/ns/payments/*'). Unset allows any; empty allows none."""
    allowed_ip_ranges: list[Pattern] | None = None
    """IP SANs that may be certified, as CIDRs. Unset allows any; empty allows none."""
    allowed_email_addresses: list[Pattern] | None = None
    """Email SANs that may be certified; '*' matches any characters. Unset allows any."""

    @field_validator("allowed_ip_ranges")
    @classmethod
    def _cidrs(cls, ranges: list[str] | None) -> list[str] | None:
        for text in ranges or ():
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise PydanticCustomError("invalid_input", "{value} is not a CIDR",
                                          {"value": repr(text)}) from None
        return ranges


class KeyIssuerSpec(_Spec):
    """A cert-manager issuer whose CA key is a ManagedKey that never leaves its provider."""

    key_ref: KeyReference
    ca: CertificateAuthority
    policy: IssuancePolicy = _section(IssuancePolicy)
    rsa_signature_scheme: RsaSignatureScheme = RsaSignatureScheme.PSS
    """How an RSA CA key signs: PSS (RSASSA-PSS, SHA-256, salt 32; the default) or
    PKCS1v15 (sha256WithRSAEncryption), for TLS software that expects it."""
    crl_next_update: IsoDuration = "P7D"
    """How long each CRL is valid (its nextUpdate after thisUpdate, ISO 8601); a new one is
    signed when half of it is left, on each revocation and when the CA changes."""


class PreviousCA(_Spec):
    """A CA certificate the issuer signed with before, kept in the CA bundle while its
    key version may still verify (grace) and it has not expired."""

    key_id: str
    certificate: str
    """PEM."""


class Bridge(_Spec):
    """A cross-signed bridge: the new CA certificate's subject and public key, signed by the
    version it replaced, so that clients trusting only the old root verify new certificates."""

    from_key_id: str
    key_id: str
    certificate: str
    """PEM."""


class RevokedCertificate(_Spec):
    """A certificate this issuer signed and then revoked (listed in its CRL until it expires)."""

    serial: str
    """Hex, as in the audit trail."""
    revoked_at: AwareDatetime
    reason: str = "unspecified"
    certificate_request: str | None = None
    """namespace/name of the CertificateRequest it was issued for."""
    not_after: AwareDatetime | None = None


class KeyIssuerStatus(_Status):
    """The CA certificate in use and whether the issuer signs."""

    conditions: list[Condition] = _conditions()
    """Ready: True with reason CAReady, or False naming why (KeyNotReady, CAKeyMismatch...)."""
    observed_generation: int | None = None
    ca_certificate: str | None = None
    """The CA certificate, PEM."""
    ca_fingerprint: str | None = None
    """SHA-256 of the CA certificate's DER, hex."""
    ca_not_after: AwareDatetime | None = None
    """When the CA certificate expires."""
    ca_key_id: str | None = None
    """The ManagedKey version (key ID) the CA certificate certifies."""
    ca_source_digest: str | None = None
    """A digest of the spec the CA certificate was made from (renewed when it changes)."""
    previous_cas: list[PreviousCA] = Field(default_factory=list, alias="previousCAs")
    """Earlier CA certificates still in the CA bundle (their key version is in grace)."""
    bridges: list[Bridge] = Field(default_factory=list)
    """Cross-signed bridges from earlier self-signed CAs to later ones."""
    revoked_certificates: list[RevokedCertificate] = Field(default_factory=list)
    """Certificates revoked (annotation qkms.io/revoke on their CertificateRequest)."""
    ca_bundle_config_map: str | None = None
    """The ConfigMap (issuer's namespace, or the key's for a ClusterKeyIssuer) holding
    ca.crt (every CA certificate that may still verify), bridges.crt and ca.crl."""
    crl_number: int | None = None
    """The last CRL's cRLNumber."""
    crl_next_update: AwareDatetime | None = None
    """When the last CRL expires."""


class KeyIssuer(_Resource):
    """Signs cert-manager CertificateRequests in its namespace with a ManagedKey."""

    kind: Literal["KeyIssuer"] = "KeyIssuer"
    spec: KeyIssuerSpec
    status: KeyIssuerStatus = Field(default_factory=KeyIssuerStatus)

    @model_validator(mode="after")
    def _own_namespace(self) -> KeyIssuer:
        if self.spec.key_ref.namespace is not None:
            raise PydanticCustomError("invalid_input", "spec.keyRef.namespace: a KeyIssuer "
                                      "uses a ManagedKey of its own namespace")
        secret = self.spec.ca.secret
        if secret is not None and secret.namespace not in (None, self.namespace):
            raise PydanticCustomError("invalid_input", "spec.ca.secret.namespace: a KeyIssuer "
                                      "reads a Secret of its own namespace")
        return self


class ClusterKeyIssuer(_Resource):
    """Signs cert-manager CertificateRequests of any namespace with a ManagedKey."""

    kind: Literal["ClusterKeyIssuer"] = "ClusterKeyIssuer"
    spec: KeyIssuerSpec
    status: KeyIssuerStatus = Field(default_factory=KeyIssuerStatus)

    @model_validator(mode="after")
    def _named_namespace(self) -> ClusterKeyIssuer:
        if self.spec.key_ref.namespace is None:
            raise PydanticCustomError("invalid_input", "spec.keyRef.namespace is required on "
                                      "a ClusterKeyIssuer")
        return self


def parse_issuer(body: Any) -> KeyIssuer | ClusterKeyIssuer:
    if body.get("kind") == "ClusterKeyIssuer":
        return parse(ClusterKeyIssuer, body)
    return parse(KeyIssuer, body)
