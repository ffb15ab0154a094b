"""What an issuer projects for verifiers: the ConfigMap ``<issuer>-ca-bundle`` in the
issuer's namespace (a ClusterKeyIssuer's: its key's namespace), owned by the issuer.

=================  ===============================================================
``ca.crt``         every CA certificate that may still verify, current first: the
                   active version's, then earlier ones whose version is in grace
                   (empty once the key is revoked), like the key's JWKS
``bridges.crt``    cross-signed bridges (new CA certificate, signed by the old
                   version): the intermediate a client trusting only an old root needs
``ca.crl``         an X.509 v2 CRL (PEM) signed by the active version: the
                   certificates revoked with the annotation ``qkms.io/revoke``
=================  ===============================================================

A new CRL is signed when the CA certificate changed, the revocations changed, or less
than half of ``spec.crlNextUpdate`` is left; after the key is revoked the last CRL stays.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from cryptography import x509 as cx509
from kubernetes.client.exceptions import ApiException

from qkms.issuer import ca as ica
from qkms.issuer import crl as icrl
from qkms.issuer import x509 as ix
from qkms.model.durations import parse_duration
from qkms.model.issuers import ClusterKeyIssuer, KeyIssuer
from qkms.model.names import GROUP, ISSUER_LABEL, MANAGED_BY, MANAGED_BY_LABEL, VERSION

from .issuer_ca import ISSUER_ACTOR, IssuerState, call, issuer_ref, now, stamp
from .kube_api import Kube

SUFFIX = "-ca-bundle"


def config_map(issuer: KeyIssuer | ClusterKeyIssuer) -> tuple[str, str]:
    """(namespace, name) of the issuer's CA bundle ConfigMap."""
    namespace = issuer.namespace or issuer.spec.key_ref.namespace
    assert namespace is not None  # a ClusterKeyIssuer must name its key's namespace
    return namespace, f"{issuer.name}{SUFFIX}"


def crl_validity(issuer: KeyIssuer | ClusterKeyIssuer, moment: datetime) -> timedelta:
    return (moment + parse_duration(issuer.spec.crl_next_update, "spec.crlNextUpdate")) - moment


def revoked_entries(issuer: KeyIssuer | ClusterKeyIssuer) -> list[icrl.Entry]:
    return [icrl.Entry(int(r.serial, 16), r.revoked_at, r.reason, r.not_after)
            for r in issuer.status.revoked_certificates]


def _crl_current(pem: str | None, state: IssuerState, wanted: set[int], moment: datetime,
                 validity: timedelta) -> bool:
    """Whether the projected CRL is still the one to serve."""
    if not pem:
        return False
    try:
        crl = cx509.load_pem_x509_crl(pem.encode())
        aki = crl.extensions.get_extension_for_class(cx509.AuthorityKeyIdentifier).value
        next_update = crl.next_update_utc
    except (ValueError, cx509.ExtensionNotFound):
        return False
    return (aki.key_identifier == state.ca.key_identifier and
            crl.issuer.public_bytes() == state.ca.subject_der and
            {r.serial_number for r in crl} == wanted and next_update is not None and
            next_update - moment > validity / 2)


async def _sign_crl(state: IssuerState, number: int, moment: datetime,
                    validity: timedelta) -> str:
    entries = revoked_entries(state.issuer)
    tbs = icrl.crl_tbs(ca=state.ca, signature_alg=state.signature_alg, this_update=moment,
                       next_update=moment + validity, number=number, entries=entries)
    signature = await state.sign(tbs, ISSUER_ACTOR)
    listed = [format(e.serial, "x") for e in entries
              if e.not_after is None or e.not_after > moment]
    await state.service.audit_key_event(
        "ISSUE_CRL", state.key_name, ISSUER_ACTOR, key_id=state.key_id, details={
            "issuer": issuer_ref(state.issuer), "crl_number": str(number),
            "revoked": ",".join(listed), "next_update": stamp(moment + validity)})
    return ix.to_pem(icrl.crl(tbs, state.signature_alg, signature), "X509 CRL")


async def publish(kube: Kube, body: Any, issuer: KeyIssuer | ClusterKeyIssuer,
                  state: IssuerState | None) -> dict[str, Any]:
    """Write the ConfigMap (``state`` None: the key is revoked, the bundle is emptied and
    the last CRL kept); returns the status fields that describe it."""
    namespace, name = config_map(issuer)
    core = kube.core
    try:
        existing = await call(core.read_namespaced_config_map, name, namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise
        existing = None
    old = dict(existing.data or {}) if existing is not None else {}
    if existing is not None and (existing.metadata.labels or {}).get(ISSUER_LABEL) != \
            issuer.name:
        raise ValueError(f"ConfigMap {namespace}/{name} exists and is not this issuer's; "
                         "qkms does not overwrite it")
    fields: dict[str, Any] = {"caBundleConfigMap": name}
    moment = now()
    data = {"ca.crt": "", "bridges.crt": "", "ca.crl": old.get("ca.crl", "")}
    if state is not None:
        data["ca.crt"] = ica.bundle([state.ca_pem.decode(),
                                     *(p["certificate"] for p in state.previous)], moment)
        data["bridges.crt"] = ica.bundle([b["certificate"] for b in state.bridges], moment)
        validity = crl_validity(issuer, moment)
        wanted = {e.serial for e in revoked_entries(issuer)
                  if e.not_after is None or e.not_after > moment}
        if not _crl_current(data["ca.crl"], state, wanted, moment, validity):
            number = (issuer.status.crl_number or 0) + 1
            data["ca.crl"] = await _sign_crl(state, number, moment, validity)
            fields["crlNumber"] = number
    if data["ca.crl"]:
        crl = cx509.load_pem_x509_crl(data["ca.crl"].encode())
        if crl.next_update_utc is not None:
            fields["crlNextUpdate"] = stamp(crl.next_update_utc)
    if data != old:
        await _write(kube, body, namespace, name, data, existing)
    return fields


async def _write(kube: Kube, body: Any, namespace: str, name: str, data: dict[str, str],
                 existing: Any) -> None:
    meta = body["metadata"]
    owner = {"apiVersion": f"{GROUP}/{VERSION}", "kind": body["kind"], "name": meta["name"],
             "uid": meta["uid"], "controller": True}
    manifest: dict[str, Any] = {
        "apiVersion": "v1", "kind": "ConfigMap", "data": data, "metadata": {
            "name": name, "namespace": namespace, "ownerReferences": [owner],
            "labels": {MANAGED_BY_LABEL: MANAGED_BY, ISSUER_LABEL: meta["name"]}}}
    core = kube.core
    if existing is None:
        await call(core.create_namespaced_config_map, namespace, manifest)
        return
    manifest["metadata"]["resourceVersion"] = existing.metadata.resource_version
    await call(core.replace_namespaced_config_map, name, namespace, manifest)
