"""Every Kubernetes name qkms uses: API group and version, labels, annotations, the
finalizer, and the objects it keeps in its own namespace. One place, so that a label is
never spelled two ways; pure data, so that decisions (reconcile/) and the operator (k8s/)
share it."""

from __future__ import annotations

GROUP = "qkms.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# On namespaces: which environment's keys the namespace holds.
ENVIRONMENT_LABEL = "qkms.io/environment"

# On ManagedKeys: one-shot requests (decisions.pending_requests).
ROTATE_ANNOTATION = "qkms.io/rotate"
ROTATE_ID_ANNOTATION = "qkms.io/rotate-id"
FINALIZER = "qkms.io/finalizer"
KOPF_PREFIX = "kopf.qkms.io"  # Kopf's own progress and diff-base annotations

# On projections (Secrets and ConfigMaps qkms writes) and other objects it owns.
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "qkms"
KEY_LABEL = "qkms.io/managed-key"
ISSUER_LABEL = "qkms.io/issuer"

# On Secrets a ManagedKey may import (spec.importFrom): the ManagedKeys allowed to.
IMPORT_ANNOTATION = "qkms.io/import-allowed-for"

# On Events: the audit entry an Event reports (its CID).
AUDIT_ANNOTATION = "qkms.io/audit-ref"

# On CertificateRequests: revoke the certificate issued for it.
REVOKE_ANNOTATION = "qkms.io/revoke"

# Key records kept as Secrets in the operator's namespace (k8s/secret_store.py).
RECORD_KIND_LABEL = "qkms.io/record-kind"
RECORD_SCOPE_LABEL = "qkms.io/record-scope"
RECORD_ANNOTATION = "qkms.io/record"

# Objects in the operator's namespace.
AUDIT_PINS = "qkms-audit-pins"  # ConfigMap: each environment's pinned checkpoint key
AUDIT_ANCHORS = "qkms-audit-anchors"  # ConfigMap: each audit writer's latest checkpoint
CA_CONFIGMAP = "qkms-ca"  # ConfigMap: the data plane's CA, in every namespace with keys
SERVICE = "qkms"  # the data plane's Service
PEERING = "qkms"  # the ClusterKopfPeering that elects the one reconciler

# cert-manager, whose CertificateRequests the issuer signs.
CERT_MANAGER_GROUP, CERT_MANAGER_VERSION = "cert-manager.io", "v1"
